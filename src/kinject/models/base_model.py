"""Pretraining the tiny base model on the synthetic world, cached by what determines it.

The cache key is a hash of the world config, the model shape, the pretraining config and
:data:`RECIPE_VERSION`; a second ``kinject demo`` finds the folder and skips training.  A
killed pretraining resumes from its last checkpoint (``<cache>.partial/``); the finished model
appears in the cache only once complete (the folder is renamed into place).
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from kinject.cache import cache_dir, cache_lock, fingerprint
from kinject.config import PretrainConfig, TinyModelConfig, WorldConfig
from kinject.fileio import write_json, write_text
from kinject.world.build import World, build_world

RECIPE_VERSION = 3  # bump when the pretraining text or loop changes meaning


def base_model_dir(world: WorldConfig, model: TinyModelConfig, pretrain: PretrainConfig) -> Path:
    from kinject.training.loop import with_bf16_resolved

    key = fingerprint(
        RECIPE_VERSION,
        world.model_dump(mode="json"),
        model.model_dump(mode="json"),
        with_bf16_resolved(pretrain.model_dump(mode="json")),
    )
    return cache_dir() / "base-models" / f"tiny-llama-{key}"


def mix_settings(config: PretrainConfig):
    from kinject.world.pretraining import MixSettings

    return MixSettings(
        known_bios=config.known_bios,
        known_questions=config.known_questions,
        reading_ratio=config.reading_ratio,
        reading_questions=(config.reading_questions_min, config.reading_questions_max),
        max_distractor_bios=config.max_distractor_bios,
        answer_loss_only=config.answer_loss_only,
        quiz_prefix_probability=config.quiz_prefix_probability,
        max_quiz_questions=config.max_quiz_questions,
    )


def main_documents(world: World, config: PretrainConfig, epoch: int):
    """Pass ``epoch`` of the main phase: known people and reading documents."""
    from kinject.world.pretraining import pretraining_documents

    return pretraining_documents(world, config.seed, epoch, mix_settings(config))


def warmup_documents(world: World, config: PretrainConfig, epoch: int):
    """Pass ``epoch`` of the reading warm-up: reading only, bios growing from a few facts to
    all of them (short contexts make the copy-from-context signal strong enough to be
    learned early)."""
    from kinject.world.pretraining import pretraining_documents

    stage = min(len(config.reading_curriculum) - 1, epoch // config.curriculum_stage_epochs)
    settings = replace(mix_settings(config), bio_facts=config.reading_curriculum[stage])
    # Epoch numbers far from the main phase's, so the warm-up text is its own.
    return pretraining_documents(world, config.seed, 1_000_000 + epoch, settings, reading_only=True)


def train_world_tokenizer(world: World, model_config: TinyModelConfig, config: PretrainConfig):
    """BPE over pretraining text, the knowledge base and its paraphrases (deterministic)."""
    from kinject.models.tokenizer import train_bpe_tokenizer
    from kinject.world.build import kb_documents, paraphrases

    texts = [d.text for d in main_documents(world, config, 0)]
    texts += [d["text"] for d in kb_documents(world)]
    texts += [p for row in paraphrases(world) for p in row["paraphrases"]]
    return train_bpe_tokenizer(texts, model_config.vocab_size)


def pretraining_batches(world: World, tokenizer, config: PretrainConfig):
    """``batch_for(step)``: the warm-up's blocks, then the main phase's."""
    from kinject.models.packing import PackedBlocks

    def blocks(documents):
        return PackedBlocks(
            tokenizer, documents, config.block_size, config.batch_size, config.isolate_documents
        )

    warmup = blocks(lambda epoch: warmup_documents(world, config, epoch))
    main = blocks(lambda epoch: main_documents(world, config, epoch))

    def batch_for(step: int):
        if step < config.reading_warmup_steps:
            return warmup.batch_for(step)
        return main.batch_for(step - config.reading_warmup_steps)

    return batch_for


def pretrain_base_model(
    world: World,
    model_config: TinyModelConfig,
    config: PretrainConfig,
    out_dir: Path,
    show_progress: bool = True,
) -> Path:
    """Train tokenizer and model; write a Hugging Face model folder to ``out_dir``.

    A killed run resumes from ``<out_dir>.partial/checkpoint.pt`` (the folder name is the
    config's hash, so a checkpoint always belongs to the same config).
    """
    partial = out_dir.with_name(out_dir.name + ".partial")
    tokenizer = train_world_tokenizer(world, model_config, config)
    model, result = pretrain_tiny_llama(
        model_config,
        tokenizer,
        config,
        pretraining_batches(world, tokenizer, config),
        partial,
        "pretraining base model",
        show_progress,
    )
    _save(model, tokenizer, result, world, model_config, config, out_dir)
    shutil.rmtree(partial)
    return out_dir


def pretrain_tiny_llama(
    model_config: TinyModelConfig,
    tokenizer,
    config,
    batch_for,
    partial: Path,
    description: str,
    show_progress: bool = True,
):
    """``(model, result)``: a tiny Llama built from ``model_config`` and trained from scratch
    by ``config`` (a :class:`PretrainConfig` or :class:`TextPretrainConfig`: seed, steps,
    schedule, bf16, threads) on ``batch_for(step)``, checkpointing in ``partial``, from which
    a killed run resumes.  A checkpoint of an older version is started over (the cache is
    ours)."""
    import torch

    from kinject.models.tiny import build_tiny_llama
    from kinject.training.loop import Schedule, StaleCheckpoint, train

    if config.threads:
        torch.set_num_threads(config.threads)
    partial.mkdir(parents=True, exist_ok=True)
    schedule = Schedule(
        steps=config.steps,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        kind=config.schedule,
    )

    def run():
        model = build_tiny_llama(model_config, tokenizer, seed=config.seed)
        return model, train(
            model,
            batch_for,
            schedule,
            bf16=config.bf16,
            checkpoint_dir=partial,
            description=description,
            show_progress=show_progress,
        )

    try:
        return run()
    except StaleCheckpoint:
        (partial / "checkpoint.pt").unlink()
        return run()


def _save(model, tokenizer, result, world, model_config, config, out_dir: Path) -> None:
    recipe = {
        "world": world.config.model_dump(mode="json"),
        "model": model_config.model_dump(mode="json"),
        "pretrain": config.model_dump(mode="json"),
    }
    summary = {"recipe_version": RECIPE_VERSION}
    save_model_folder(model, tokenizer, result, out_dir, recipe, summary, made_by="kinject demo")


def save_model_folder(
    model, tokenizer, result, out_dir: Path, recipe: dict, summary: dict, made_by: str
) -> None:
    """A pretrained model's folder: weights, tokenizer, ``kinject_pretrain.yaml`` (how it was
    made), its training log and summary.  Written beside ``out_dir`` and renamed into place
    when complete."""
    import yaml

    from kinject.models.loading import quiet_transformers
    from kinject.models.tiny import parameter_count
    from kinject.training.loop import write_training_log

    quiet_transformers()
    staging = out_dir.with_name(out_dir.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    write_text(
        staging / "kinject_pretrain.yaml",
        f"# how this base model was made ({made_by})\n" + yaml.safe_dump(recipe, sort_keys=False),
    )
    write_training_log(staging / "training_log.jsonl", result)
    write_json(
        staging / "pretrain_summary.json",
        {**result.summary(), "parameters": parameter_count(model), **summary},
    )
    if out_dir.exists():
        shutil.rmtree(out_dir)
    staging.rename(out_dir)


def ensure_base_model(
    world_config: WorldConfig,
    model_config: TinyModelConfig,
    config: PretrainConfig,
    show_progress: bool = True,
) -> tuple[Path, bool]:
    """The cached base model folder, pretraining it first if needed; ``(path, was_cached)``."""
    out_dir = base_model_dir(world_config, model_config, config)
    with cache_lock(out_dir):  # two demos at once: one trains, the other waits and reuses
        if (out_dir / "config.json").exists():
            return out_dir, True
        pretrain_base_model(build_world(world_config), model_config, config, out_dir, show_progress)
    return out_dir, False
