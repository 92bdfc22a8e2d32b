"""Cold-start SFT on drim-data's zoom trajectories with TRL's SFTTrainer.

The trajectories teach the multi-turn pattern (think, zoom, look at the crop, maybe zoom again, answer). The
collator feeds every crop to the model and renders the tool schema exactly as GRPO will.
"""

from __future__ import annotations

from trl import SFTTrainer

from drim_train.collator import ZoomSFTCollator
from drim_train.configs import DataModelArguments, DrimSFTConfig, lora_config, resume_point
from drim_train.data import load_split, read_manifest, resolve, zoom_spec
from drim_train.models import load_model, load_processor, model_family, save_trained


def build_trainer(args: DataModelArguments, config: DrimSFTConfig) -> SFTTrainer:
    version = resolve(args.data, args.data_revision)
    spec = zoom_spec(read_manifest(version))
    dataset = load_split(version, "sft", validate=args.validate)
    processor = load_processor(args.model, args.model_revision)
    family = model_family(args.model, args.model_revision)
    model = load_model(args.model, args.model_revision, args.dtype)
    collator = ZoomSFTCollator(
        processor,
        tools=[spec.schema(family.box_arg)],
        assistant_only_loss=config.assistant_only_loss,
        max_length=config.max_length,
        frame=family.frame(processor),
    )
    return SFTTrainer(
        model=model,
        args=config,
        train_dataset=dataset,
        processing_class=processor,
        data_collator=collator,
        peft_config=lora_config(args),
    )


def main(args: DataModelArguments, config: DrimSFTConfig) -> SFTTrainer:
    trainer = build_trainer(args, config)
    trainer.train(resume_from_checkpoint=resume_point(config))
    save_trained(trainer, config.output_dir)
    return trainer
