"""drim-data: generate a dataset version from a recipe, and inspect what a recipe's database holds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from drim_data.stages import ORDER

app = typer.Typer(
    help="Build verifiable multi-turn zoom-in VQA datasets.", no_args_is_help=True, pretty_exceptions_enable=False
)
console = Console()
RecipeArg = Annotated[Path, typer.Argument(help="a YAML recipe, e.g. pipelines/demo.yaml")]


def _fail(exc: Exception) -> None:
    console.print(f"[red]error:[/red] {exc}")
    raise typer.Exit(2)


def _open_state(recipe: Path):
    """The recipe and a read-only connection to its existing database (also while a run holds it); a recipe that
    has not run is a clear error."""
    from drim_data.db import read_only
    from drim_data.errors import DrimError
    from drim_data.recipe import load_recipe

    loaded = load_recipe(recipe)
    if not loaded.db.exists():
        raise DrimError(f"{loaded.db} does not exist yet: run drim-data generate {recipe} first")
    return loaded, read_only(loaded.db)


@app.command()
def generate(
    recipe: RecipeArg,
    until: Annotated[str | None, typer.Option(help=f"stop after this stage: {', '.join(ORDER)}")] = None,
    progress: Annotated[bool, typer.Option(help="show progress bars")] = True,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            is_flag=False,
            flag_value="local",
            metavar="[ADDRESS]",
            help="run partitions as Ray tasks: on a local Ray (--ray alone) or a cluster's (auto, ray://host:10001)",
        ),
    ] = None,
    partitions: Annotated[int, typer.Option(help="with --ray: how many partitions the images are split into")] = 4,
) -> None:
    """Run the pipeline; resumes where a previous run stopped and writes a new version only if anything changed."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from drim_data.errors import DrimError
    from drim_data.pipeline import run_pipeline
    from drim_data.recipe import load_recipe

    if until is not None and until not in ORDER:
        _fail(ValueError(f"--until must be one of {', '.join(ORDER)}"))
    if ray is not None and until is not None:
        _fail(ValueError("--until runs on one machine: leave out --ray"))
    bars = Progress(
        TextColumn("{task.description:<13}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not progress,
    )

    def track(items, description, total):
        console.print(f"stage {description}: {total} pending", highlight=False)
        yield from bars.track(items, total=total, description=description)

    try:
        loaded = load_recipe(recipe)
        with bars:
            if ray is None:
                result = run_pipeline(loaded, track=track, until=until)
            else:
                from drim_data.cluster import run_partitioned

                address = None if ray == "local" else ray
                result = run_partitioned(loaded, partitions, address, track=track)
    except DrimError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        console.print("interrupted: nothing was exported; the same command resumes where this run stopped")
        raise typer.Exit(130) from None
    table = Table(title=f"drim-data generate {recipe}")
    for col in ("stage", "processed", "kept / written", "dropped", "seconds"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for s in result.stages:
        dropped = sum(v for k, v in s.counts.items() if k.startswith("dropped:"))
        kept = ", ".join(f"{k}={v}" for k, v in sorted(s.counts.items()) if not k.startswith("dropped:"))
        table.add_row(s.stage, str(s.processed), kept or "-", str(dropped), f"{s.seconds:.1f}")
    console.print(table)
    export = result.export
    if export is None:
        console.print(f"stopped after {until}; nothing exported")
    elif export.written:
        console.print(f"[green]wrote v{export.version}[/green] {export.path}  rows: {export.rows}")
    elif export.version:
        console.print(f"nothing changed: v{export.version} is current ({export.path})")
    else:
        console.print("no items survived the pipeline; nothing exported (see drim-data status)")


@app.command()
def status(recipe: RecipeArg) -> None:
    """Per-stage counts, drops by reason, teacher calls, time spent and versions."""
    from drim_data.errors import DrimError
    from drim_data.status import read_status

    try:
        loaded, con = _open_state(recipe)
    except DrimError as exc:
        _fail(exc)
    endpoints = [e for e in (loaded.teacher.endpoint, loaded.teacher.solver) if e is not None and e.price]
    st = read_status(con, {e.model: e.price for e in endpoints})
    con.close()
    stages = Table(title=f"{loaded.dataset}: stages")
    for col in ("stage", "processed", "output", "dropped", "seconds"):
        stages.add_column(col, justify="left" if col == "stage" else "right")
    for s in st.stages:
        stages.add_row(s.stage, str(s.processed), f"{s.output} {s.output_name}", str(s.dropped), f"{s.seconds:.1f}")
    console.print(stages)
    drops = Table(title="drops by reason")
    for col in ("stage", "reason", "count"):
        drops.add_column(col)
    for stage, reason, n in st.drops:
        drops.add_row(stage, reason, str(n))
    console.print(drops if st.drops else "no drops")
    teacher = Table(title="teacher calls")
    for col in ("stage", "model", "ok", "failed", "prompt tokens", "completion tokens", "cost"):
        teacher.add_column(col, justify="left" if col in ("stage", "model") else "right")
    for stage, model, ok, failed, prompt, completion, cost in st.teacher:
        teacher.add_row(
            stage, model, str(ok), str(failed), str(prompt), str(completion), "-" if cost is None else f"{cost:.4f}"
        )
    console.print(teacher if st.teacher else "no teacher calls")
    if st.per_kept:
        costs = Table(title=f"model calls per kept item ({st.kept} kept by verify)")
        for col in ("stage", "calls", "prompt tokens", "completion tokens", "calls/kept", "tokens/kept"):
            costs.add_column(col, justify="left" if col == "stage" else "right")
        for c in st.per_kept:
            per = ["-" if v is None else f"{v:.1f}" for v in (c.calls_per_kept, c.tokens_per_kept)]
            costs.add_row(c.stage, str(c.calls), str(c.prompt_tokens), str(c.completion_tokens), *per)
        console.print(costs)
    for version, parent, sft, rl, path in st.versions:
        console.print(f"v{version} (parent {parent or '-'}): sft {sft}, rl {rl}  {path}", highlight=False)


VersionArg = Annotated[Path, typer.Argument(help="a version folder, e.g. out/drim-demo/v1")]


@app.command()
def versions(recipe: RecipeArg) -> None:
    """List the recipe's versions with parent, recipe hash, counts and the items added, removed, changed."""
    from drim_data.errors import DrimError
    from drim_data.release.versions import list_versions
    from schemas.rows import SPLITS

    try:
        loaded, con = _open_state(recipe)
        infos = list_versions(con)
        con.close()
    except DrimError as exc:
        _fail(exc)
    if not infos:
        console.print("no versions yet")
        return
    table = Table(title=f"{loaded.dataset}: versions")
    for col in ("version", "parent", "created", "recipe hash", *SPLITS, "vs parent (+added -removed ~changed)"):
        table.add_column(col)
    table.add_column("state", overflow="fold")
    for v in infos:
        table.add_row(
            f"v{v.version}",
            f"v{v.parent}" if v.parent else "-",
            v.created_at,
            v.recipe_hash[:12],
            *(str(v.rows.get(split, "?")) for split in SPLITS),
            v.diff.summary() if v.diff else "?",
            v.state if v.state != "ok" else f"ok  {v.path}",
        )
    console.print(table)


@app.command()
def compare(
    old: VersionArg,
    new: VersionArg,
    show: Annotated[int, typer.Option(help="list up to this many ids of each kind")] = 10,
) -> None:
    """Items added, removed and changed from one version folder to another (both are verified first)."""
    from drim_data.errors import DrimError
    from drim_data.release.versions import compare_versions

    try:
        diff = compare_versions(old, new)
    except DrimError as exc:
        _fail(exc)
    console.print(f"{old} -> {new}: {diff.summary()}", highlight=False)
    for kind in ("added", "removed", "changed"):
        ids = getattr(diff, kind)
        if ids:
            more = f" (+{len(ids) - show} more)" if len(ids) > show else ""
            console.print(f"{kind} {len(ids)}: {', '.join(ids[:show])}{more}", highlight=False)


@app.command()
def publish(
    version: VersionArg,
    repo_id: Annotated[str, typer.Option("--repo-id", help="the Hub dataset repo, owner/name")],
    private: Annotated[
        bool, typer.Option(help="create the repo private (an existing repo keeps its visibility)")
    ] = False,
    dry_run: Annotated[bool, typer.Option(help="build and check the Hub folder, upload nothing")] = False,
    folder: Annotated[
        Path | None, typer.Option(help="where to build the Hub folder (default OUT/<dataset>/hub/v<N>)")
    ] = None,
) -> None:
    """Upload a version to the Hugging Face Hub and tag it v<N>; the token comes from HF_TOKEN or `hf auth login`."""
    from drim_data.errors import DrimError
    from drim_data.release.publish import build_folder, upload

    try:
        built = build_folder(version, folder, repo_id=repo_id)
        console.print(
            f"built and checked {built} (every config its card declares loads with datasets)", highlight=False
        )
        if dry_run:
            files = sorted(p for p in built.rglob("*") if p.is_file())
            size = sum(p.stat().st_size for p in files)
            console.print(
                f"dry run: would upload {len(files)} files ({size / 1e6:.1f} MB) to {repo_id}", highlight=False
            )
            return
        result = upload(built, repo_id, private=private)
    except DrimError as exc:
        _fail(exc)
    if result.already_published:
        console.print(f"{repo_id} already has {result.tag} with these files; nothing to do", highlight=False)
        return
    console.print(
        f"[green]published {result.tag}[/green] to {repo_id}: {len(result.uploaded)} files sent, "
        f"{len(result.unchanged)} already there, {len(result.deleted)} removed; "
        f'load_dataset("{repo_id}", "sft", revision="{result.tag}")',
        highlight=False,
    )


@app.command()
def view(
    version: VersionArg,
    recipe: Annotated[Path | None, typer.Option(help="the recipe: adds verdicts and the dropped items")] = None,
    out: Annotated[Path | None, typer.Option(help="folder for the page (default OUT/<dataset>/view/v<N>)")] = None,
    page_size: Annotated[int, typer.Option(help="items per page")] = 25,
) -> None:
    """Write a static review page for a version: images with boxes, zoom crops, dialogue, verdicts, filters."""
    from drim_data.errors import DrimError
    from drim_data.release.view import build_view

    con = None
    try:
        if recipe is not None:
            _, con = _open_state(recipe)
        result = build_view(version, out, con, page_size=page_size)
    except DrimError as exc:
        _fail(exc)
    finally:
        if con is not None:
            con.close()
    console.print(
        f"wrote {result.page} ({result.kept} items, {result.dropped} dropped); open it in a browser", highlight=False
    )


@app.command()
def audit(
    version: VersionArg,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object: figures, breakdown, rows")] = False,
    fail_on: Annotated[
        list[str] | None,
        typer.Option(
            "--fail-on",
            help="KEY=VALUE, repeatable: exit 1 when the figure breaks it (an upper bound for bad things such as "
            "identical_zooms, a lower bound for good things such as median_detail_gain)",
        ),
    ] = None,
) -> None:
    """Figures that say whether a version teaches visual search, and a flag per row, from its shards alone."""
    import json

    from drim_data.errors import DrimError
    from drim_data.release.audit import FIGURES, audit_version, broken_thresholds, parse_thresholds
    from schemas.rows import SPLITS

    try:
        thresholds = parse_thresholds(fail_on or [])
        result = audit_version(version)
    except DrimError as exc:
        _fail(exc)
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2))
    else:
        table = Table(title=f"drim-data audit {version}")
        for col in ("figure", "value", "bound"):
            table.add_column(col, justify="right" if col == "value" else "left")
        for key, value in result.figures.items():
            shown = "-" if value is None else f"{value:.3g}" if isinstance(value, float) else str(value)
            table.add_row(key, shown, "at most" if FIGURES[key][0] == "max" else "at least")
        console.print(table)
        for name, per_split in result.breakdown.items():
            if isinstance(per_split, dict) and set(per_split) == set(SPLITS):
                shown = ", ".join(f"{split} {value}" for split, value in per_split.items())
                console.print(f"{name}: {shown}", highlight=False)
        console.print(f"answer letters: {result.breakdown['answer_letters']}", highlight=False)
        console.print(f"rows flagged: {result.breakdown['flags']}", highlight=False)
    broken = broken_thresholds(result.figures, thresholds)
    for line in broken:
        typer.echo(f"fail: {line}", err=True)
    if broken:
        raise typer.Exit(1)
