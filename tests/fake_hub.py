"""A stand-in for the Hugging Face Hub's servers on 127.0.0.1: the few HTTP endpoints the real `huggingface_hub`
and `datasets` clients call to create a dataset repo, upload through the LFS protocol, commit, tag, and read back
a revision. Point HF_ENDPOINT (or HfApi(endpoint=...)) at `url`. It keeps everything in memory, so tests can see
what was stored; `outage_after_puts` makes the network fail once that many uploads landed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

import yaml

LFS_THRESHOLD = 10 * 1024 * 1024


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Blob:
    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def entry(self, path: str) -> dict:
        entry = {"type": "file", "path": path, "size": len(self.data)}
        if self.lfs:
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {len(self.data)}\n"
            entry["oid"] = git_blob_id(pointer.encode())
            entry["lfs"] = {"oid": self.sha256, "size": len(self.data), "pointerSize": len(pointer)}
        else:
            entry["oid"] = git_blob_id(self.data)
        return entry


@dataclass
class Repo:
    private: bool
    commits: dict[str, dict[str, Blob]] = field(default_factory=dict)  # commit oid -> tree
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    log: list[dict] = field(default_factory=list)  # each commit's operations, oldest first

    def resolve(self, revision: str) -> str | None:
        revision = unquote(revision)
        return (
            self.branches.get(revision) or self.tags.get(revision) or (revision if revision in self.commits else None)
        )


class FakeHub(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, token: str):
        super().__init__(("127.0.0.1", 0), Handler)
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.storage: dict[str, bytes] = {}  # LFS objects by sha256, shared like the Hub's content-addressed store
        self.puts: list[str] = []  # LFS object ids uploaded, in order
        self.outage_after_puts: int | None = None
        self.lock = threading.Lock()
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> FakeHub:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()

    def tree(self, repo_id: str, revision: str) -> dict[str, Blob]:
        repo = self.repos[repo_id]
        return repo.commits[repo.resolve(revision)]

    def replace_file(self, repo_id: str, revision: str, path: str, data: bytes) -> None:
        """Change a file of a revision in place, as a compromised or corrupted store would serve it."""
        tree = self.tree(repo_id, revision)
        tree[path] = Blob(data, tree[path].lfs)

    def _commit(self, repo: Repo, parent: str | None, tree: dict[str, Blob], operations: list) -> str:
        oid = hashlib.sha1(json.dumps([parent, sorted((p, b.sha256) for p, b in tree.items())]).encode()).hexdigest()
        repo.commits[oid] = tree
        repo.branches["main"] = oid
        repo.log.append({"oid": oid, "operations": operations})
        return oid


ROUTES = [
    ("POST", r"/api/repos/create", "create_repo"),
    ("POST", r"/api/validate-yaml", "validate_yaml"),
    ("GET", r"/api/datasets/(?P<repo>[^/]+/[^/]+)/refs", "refs"),
    ("GET", r"/api/datasets/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", "tree"),
    ("GET", r"/api/datasets/(?P<repo>[^/]+/[^/]+)/revision/(?P<rev>[^/]+)", "info"),
    ("GET", r"/api/datasets/(?P<repo>[^/]+/[^/]+)", "info"),
    ("POST", r"/api/datasets/(?P<repo>[^/]+/[^/]+)/paths-info/(?P<rev>[^/]+)", "paths_info"),
    ("POST", r"/api/datasets/(?P<repo>[^/]+/[^/]+)/preupload/(?P<rev>[^/]+)", "preupload"),
    ("POST", r"/datasets/(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch", "lfs_batch"),
    ("PUT", r"/lfs-upload/(?P<oid>[0-9a-f]{64})", "lfs_put"),
    ("POST", r"/api/datasets/(?P<repo>[^/]+/[^/]+)/commit/(?P<rev>[^/]+)", "commit"),
    ("POST", r"/api/datasets/(?P<repo>[^/]+/[^/]+)/tag/(?P<rev>[^/]+)", "tag"),
    ("GET", r"/datasets/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
    ("HEAD", r"/datasets/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
]
WRITES = {"create_repo", "preupload", "lfs_batch", "commit", "tag"}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeHub

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        self._route("GET")

    def do_HEAD(self) -> None:
        self._route("HEAD")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PUT(self) -> None:
        self._route("PUT")

    def _route(self, method: str) -> None:
        url = urlparse(self.path)
        self.query = parse_qs(url.query)
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length else b""
        hub = self.server
        with hub.lock:
            if hub.outage_after_puts is not None and len(hub.puts) >= hub.outage_after_puts:
                self.close_connection = True  # the link is down: the connection drops without a reply
                return
        for verb, pattern, name in ROUTES:
            match = re.fullmatch(pattern, url.path)
            if verb == method and match:
                if name in WRITES and self.headers.get("Authorization") != f"Bearer {hub.token}":
                    return self._json({"error": "Invalid credentials in Authorization header"}, 401)
                params = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                with hub.lock:
                    return getattr(self, name)(**params)
        self._json({"error": f"not stood in for: {method} {url.path}"}, 404)

    def _json(self, payload, status: int = 200, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _repo(self, repo_id: str) -> Repo | None:
        repo = self.server.repos.get(repo_id)
        if repo is None:
            self._json({"error": "Repository not found"}, 404, {"X-Error-Code": "RepoNotFound"})
        return repo

    def _revision(self, repo: Repo, rev: str) -> str | None:
        oid = repo.resolve(rev)
        if oid is None:
            self._json({"error": f"Invalid rev id: {rev}"}, 404, {"X-Error-Code": "RevisionNotFound"})
        return oid

    # writes

    def create_repo(self) -> None:
        payload = json.loads(self.body)
        repo_id = f"{payload['organization']}/{payload['name']}"
        url = f"{self.server.url}/datasets/{repo_id}"
        if repo_id in self.server.repos:
            return self._json({"error": "You already created this dataset repo", "url": url}, 409)
        repo = Repo(private=payload.get("visibility") == "private" or bool(payload.get("private")))
        self.server.repos[repo_id] = repo
        attributes = Blob(
            b"*.parquet filter=lfs diff=lfs merge=lfs -text\n*.jpg filter=lfs diff=lfs merge=lfs -text\n", False
        )
        self.server._commit(repo, None, {".gitattributes": attributes}, [])
        self._json({"url": url, "name": repo_id})

    def validate_yaml(self) -> None:
        content = json.loads(self.body)["content"]
        try:
            header = yaml.safe_load(content.split("---\n")[1]) if content.startswith("---\n") else {}
        except yaml.YAMLError as exc:
            return self._json({"errors": [{"message": str(exc)}]}, 400)
        if not isinstance(header, dict) or not isinstance(header.get("license", ""), str):
            return self._json({"errors": [{"message": "metadata must be a mapping with a string license"}]}, 400)
        self._json({"errors": [], "warnings": []})

    def preupload(self, repo: str, rev: str) -> None:
        if (r := self._repo(repo)) is None:
            return
        tree = r.commits.get(r.resolve(rev) or "", {})
        files = []
        for f in json.loads(self.body)["files"]:
            sample = base64.b64decode(f["sample"])
            lfs = f["size"] > LFS_THRESHOLD or b"\0" in sample  # binary content goes to LFS, as on the Hub
            known = tree.get(f["path"])
            oid = known.entry(f["path"])["oid"] if known else None
            files.append(
                {"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid}
            )
        self._json({"files": files, "commitOid": r.resolve(rev)})

    def lfs_batch(self, repo: str) -> None:
        if self._repo(repo) is None:
            return
        objects = []
        for obj in json.loads(self.body)["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.server.storage:  # content already stored needs no upload
                entry["actions"] = {"upload": {"href": f"{self.server.url}/lfs-upload/{obj['oid']}"}}
            objects.append(entry)
        self._json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def lfs_put(self, oid: str) -> None:
        if hashlib.sha256(self.body).hexdigest() != oid:
            return self._json({"error": "content does not match its oid"}, 400)
        self.server.storage[oid] = self.body
        self.server.puts.append(oid)
        self._json({})

    def commit(self, repo: str, rev: str) -> None:
        if (r := self._repo(repo)) is None:
            return
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        head = r.resolve(rev)
        header = lines[0]["value"]
        if header.get("parentCommit") not in (None, head):
            return self._json({"error": "A commit has happened since. Please refresh and try again."}, 412)
        tree = dict(r.commits[head])
        operations = []
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            operations.append((key, value["path"]))
            if key == "file":
                tree[value["path"]] = Blob(base64.b64decode(value["content"]), False)
            elif key == "lfsFile":
                if value["oid"] not in self.server.storage:
                    return self._json({"error": f"LFS object {value['oid']} was never uploaded"}, 422)
                tree[value["path"]] = Blob(self.server.storage[value["oid"]], True)
            elif key == "deletedFile":
                tree.pop(value["path"], None)
            elif key == "deletedFolder":
                tree = {p: b for p, b in tree.items() if not p.startswith(value["path"].rstrip("/") + "/")}
        oid = self.server._commit(r, head, tree, operations)
        self._json({"commitUrl": f"{self.server.url}/datasets/{repo}/commit/{oid}", "commitOid": oid})

    def tag(self, repo: str, rev: str) -> None:
        if (r := self._repo(repo)) is None or (oid := self._revision(r, rev)) is None:
            return
        name = json.loads(self.body)["tag"]
        if name in r.tags:
            return self._json({"error": f"Tag {name} already exists"}, 409)
        r.tags[name] = oid
        self._json({"name": name, "ref": f"refs/tags/{name}", "targetCommit": oid})

    # reads

    def refs(self, repo: str) -> None:
        if (r := self._repo(repo)) is None:
            return
        branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": o} for n, o in r.branches.items()]
        tags = [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": o} for n, o in r.tags.items()]
        self._json({"branches": branches, "tags": tags, "converts": []})

    def tree(self, repo: str, rev: str, path: str = "") -> None:
        if (r := self._repo(repo)) is None or (oid := self._revision(r, rev)) is None:
            return
        recursive = self.query.get("recursive", ["false"])[0].lower() == "true"
        entries, folders = [], set()
        prefix = path.rstrip("/") + "/" if path else ""
        for p, blob in sorted(r.commits[oid].items()):
            if not p.startswith(prefix):
                continue
            rest = p[len(prefix) :].split("/")
            for depth in range(1, len(rest)):
                folder = prefix + "/".join(rest[:depth])
                if (recursive or depth == 1) and folder not in folders:
                    folders.add(folder)
                    entries.append({"type": "directory", "path": folder, "oid": git_blob_id(folder.encode())})
            if recursive or len(rest) == 1:
                entries.append(blob.entry(p))
        if path and not entries:
            return self._json({"error": "Entry not found"}, 404, {"X-Error-Code": "EntryNotFound"})
        self._json(entries)

    def paths_info(self, repo: str, rev: str) -> None:
        if (r := self._repo(repo)) is None or (oid := self._revision(r, rev)) is None:
            return
        form = parse_qs(self.body.decode())
        paths = form.get("paths") or json.loads(self.body or b"{}").get("paths", [])
        tree = r.commits[oid]
        out = []
        for p in paths:
            if p in tree:
                out.append(tree[p].entry(p))
            elif any(k.startswith(p.rstrip("/") + "/") for k in tree):
                out.append({"type": "directory", "path": p, "oid": git_blob_id(p.encode())})
        self._json(out)

    def info(self, repo: str, rev: str = "main") -> None:
        if (r := self._repo(repo)) is None or (oid := self._revision(r, rev)) is None:
            return
        siblings = [{"rfilename": p, "size": len(b.data)} for p, b in sorted(r.commits[oid].items())]
        self._json({"id": repo, "sha": oid, "private": r.private, "siblings": siblings, "tags": [], "disabled": False})

    def resolve(self, repo: str, rev: str, path: str) -> None:
        if (r := self._repo(repo)) is None or (oid := self._revision(r, rev)) is None:
            return
        blob = r.commits[oid].get(path)
        if blob is None:
            return self._json({"error": "Entry not found"}, 404, {"X-Error-Code": "EntryNotFound"})
        data, status = blob.data, 200
        headers = {"X-Repo-Commit": oid, "ETag": f'"{blob.entry(path)["oid"]}"', "Accept-Ranges": "bytes"}
        if blob.lfs:
            headers |= {"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(len(data))}
        ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
        if ranged:
            start = int(ranged[1])
            end = int(ranged[2]) if ranged[2] else len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{min(end, len(data) - 1)}/{len(data)}"
            data, status = data[start : end + 1], 206
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
