"""kinject's prompts and log-likelihoods against lm-evaluation-harness itself.

Prompts: lm-eval builds its own ``mmlu_<subject>`` task (the real task YAML, only the data
pointed at the local CSVs converted to the ``cais/mmlu`` layout) and kinject's prompt strings
must be byte-identical.  Scores: lm-eval's ``HFLM`` and kinject's scorer on the same tiny
Llama and GPT-2 models must agree to 1e-4 in fp32 with identical predictions.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import MMLU_DIR, MMLU_SUBJECTS
from lm_eval_tasks import OPTION_TASK_YAML, by_doc, lm_eval_task, write_mmlu_tasks
from near_ties import assert_mostly_clear, assert_same_choice, assert_same_greedy

lm_eval = pytest.importorskip("lm_eval")

from kinject.config import WorldConfig
from kinject.scoring.loglikelihood import LoglikelihoodScorer
from kinject.tasks.items import Task
from kinject.tasks.loaders import jsonl_task, mmlu_task
from kinject.tasks.prompts import build_prompt
from kinject.world.build import build_world, write_world


@pytest.fixture(scope="module")
def mmlu_lm_eval_dir(tmp_path_factory) -> Path:
    """lm-eval tasks that include the real ``mmlu_<subject>.yaml`` with local data."""
    if not MMLU_DIR.exists():
        pytest.skip("shared MMLU data not present")
    return write_mmlu_tasks(tmp_path_factory.mktemp("lm-eval-tasks"))


@pytest.fixture(scope="module")
def world_option_task(tmp_path_factory) -> tuple[Task, Path]:
    folder = tmp_path_factory.mktemp("world")
    world = write_world(
        build_world(WorldConfig(n_known=6, n_new=4, n_updated=2, n_reading=2, n_dev=2)),
        folder / "w",
    )
    task = jsonl_task("new", world / "tasks" / "new.jsonl", world / "tasks" / "dev.jsonl")
    lm_dir = folder / "lm-eval"
    lm_dir.mkdir()
    (lm_dir / "world_new.yaml").write_text(
        OPTION_TASK_YAML.format(
            name="world_new", test=world / "tasks" / "new.jsonl", dev=world / "tasks" / "dev.jsonl"
        )
    )
    return task, lm_dir


@pytest.mark.parametrize("shots", [0, 5])
def test_mmlu_prompts_are_byte_identical_to_lm_eval(mmlu_lm_eval_dir, shots):
    for subject in MMLU_SUBJECTS:
        ours = mmlu_task(MMLU_DIR / "test" / f"{subject}_test.csv")
        theirs = by_doc(lm_eval_task(mmlu_lm_eval_dir, f"local_mmlu_{subject}", shots))
        assert len(theirs) == len(ours.items)
        for item, instances in zip(ours.items, theirs):
            prompt = build_prompt(ours, item, shots)
            assert [inst.args for inst in instances] == [
                (prompt.context, continuation) for continuation in prompt.continuations
            ]


@pytest.mark.parametrize("shots", [0, 5])
def test_option_prompts_match_lm_eval_multiple_choice_template(world_option_task, shots):
    task, lm_dir = world_option_task
    theirs = by_doc(lm_eval_task(lm_dir, "world_new", shots))
    assert len(theirs) == len(task.items)
    for item, instances in zip(task.items, theirs):
        prompt = build_prompt(task, item, shots)
        assert [inst.args for inst in instances] == [
            (prompt.context, continuation) for continuation in prompt.continuations
        ]


def _requests(mmlu_lm_eval_dir, world_option_task) -> list[tuple[str, str]]:
    requests = []
    for shots in (0, 5):
        for doc in by_doc(lm_eval_task(mmlu_lm_eval_dir, "local_mmlu_anatomy", shots))[:6]:
            requests += [inst.args for inst in doc]
        _task, lm_dir = world_option_task
        for doc in by_doc(lm_eval_task(lm_dir, "world_new", shots))[:6]:
            requests += [inst.args for inst in doc]
    requests += [("", " Paris"), ("Answer: ", "Paris")]  # empty context; trailing space
    return requests


@pytest.mark.parametrize("model_fixture", ["tiny_llama_dir", "tiny_gpt2_dir"])
def test_loglikelihoods_match_lm_eval_hflm(
    request, model_fixture, mmlu_lm_eval_dir, world_option_task
):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from kinject.config import ModelSpec
    from kinject.models.loading import load_causal_lm

    folder = request.getfixturevalue(model_fixture)
    requests = _requests(mmlu_lm_eval_dir, world_option_task)
    reference = HFLM(pretrained=str(folder), device="cpu", dtype="float32", batch_size=4)
    instances = [
        Instance(request_type="loglikelihood", doc={}, arguments=args, idx=i)
        for i, args in enumerate(requests)
    ]
    expected = reference.loglikelihood(instances, disable_tqdm=True)

    model, tokenizer = load_causal_lm(ModelSpec(path=str(folder), device="cpu"))
    scorer = LoglikelihoodScorer(model, tokenizer, batch_size=7)
    got = scorer.loglikelihood(requests)

    deltas = [abs(g.logprob - e[0]) for g, e in zip(got, expected)]
    assert max(deltas) <= 1e-4
    encoded = [scorer.encode_pair(context, option) for context, option in requests]
    assert_same_greedy(model, encoded, [g.is_greedy for g in got], [bool(e[1]) for e in expected])
    # the same predictions question by question (groups of choices), but for near ties
    position, clear = 0, []
    while position < len(requests) - 2:
        context = requests[position][0]
        group = [i for i in range(position, len(requests)) if requests[i][0] == context]
        ours, theirs = [got[i].logprob for i in group], [expected[i][0] for i in group]
        clear.append(assert_same_choice(ours, theirs, label=context[-60:]))
        position = group[-1] + 1
    assert_mostly_clear(clear)


def test_acc_and_acc_norm_match_lm_eval_process_results(world_option_task, tiny_llama_dir):
    """Same log-likelihoods in, same acc and acc_norm out, question by question."""
    from kinject.config import ModelSpec
    from kinject.evaluation.arms import BaseArm
    from kinject.evaluation.runner import score_cell
    from kinject.models.loading import load_causal_lm

    task, lm_dir = world_option_task
    reference = lm_eval_task(lm_dir, "world_new", 0)
    docs = by_doc(reference)
    model, tokenizer = load_causal_lm(ModelSpec(path=str(tiny_llama_dir), device="cpu"))
    records = score_cell(LoglikelihoodScorer(model, tokenizer), task, BaseArm(), 0)
    for record, instances in zip(records, docs):
        doc = instances[0].doc
        results = [(ll, False) for ll in record["loglikelihoods"]]
        theirs = reference.process_results(doc, results)
        assert theirs["acc"] == float(record["correct"])
        assert theirs["acc_norm"] == float(record["correct_norm"])


def _rag_length_requests() -> list[tuple[str, str]]:
    """RAG-cell prompts: five long retrieved passages before each question, multi-token
    options; 5-shot questions with the same examples and letter options; plus single-token
    options, an empty context and one context longer than the model (lm-eval's left
    truncation)."""
    passage = (
        "Ada Lenz was born in Riga in 1969 and studied chemistry at the University of Oslo "
        "before she joined Starling Labs, where she led the battery group for a decade. "
    )
    requests = []
    for q in range(4):
        context = "\n\n".join(f"{passage}(passage {p}, question {q})" for p in range(5))
        context += f"\n\nQuestion: Where was person {q} born?\nAnswer:"
        for option in (" Riga", " Oslo, in Norway", " Berlin", " the city of Athens"):
            requests.append((context, option))
    shots = "".join(f"Q: What is {n} plus {n}?\nA: {2 * n}\n\n" for n in range(1, 6))
    for q in range(3):  # 5-shot: the same examples before every question, letter options
        for letter in (" A", " B", " C"):
            requests.append((f"{shots}Q: What is {q} times {q}?\nA:", letter))
    requests += [("The answer is", letter) for letter in (" A", " B", " C", " D")]
    requests += [("", " Paris"), ("", " Riga")]
    requests += [(passage * 15 + "Answer:", option) for option in (" Riga", " Oslo")]
    return requests


@pytest.mark.parametrize("share_prefix", [True, False])
def test_work_counts_the_tokens_the_forward_passes_run(tiny_llama_dir, share_prefix):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    requests = _rag_length_requests()
    widths = []

    def record(module, args, kwargs, output):
        ids = kwargs.get("input_ids", args[0] if args else None)
        assert ids.shape[0] == 1  # one row per pass: no padding to count
        widths.append(ids.shape[1])

    model.register_forward_hook(record, with_kwargs=True)
    scorer = LoglikelihoodScorer(
        model, tokenizer, batch_size=1, max_length=1000, share_prefix=share_prefix
    )
    encoded = [scorer.encode_pair(context, option) for context, option in requests]
    tokens, pairs = scorer.work(encoded)
    scorer.loglikelihood(requests)
    assert tokens == sum(widths)
    separate = sum(min(len(c) + len(o) - 1, 1000) for c, o in encoded)
    assert (tokens < separate) == share_prefix and pairs >= tokens


@pytest.mark.parametrize(
    ("model_fixture", "attention"),
    [("tiny_llama_dir", "sdpa"), ("tiny_llama_dir", "eager"), ("tiny_gpt2_dir", "sdpa")],
)
def test_prefix_sharing_gives_the_separate_sequences_scores(request, model_fixture, attention):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = request.getfixturevalue(model_fixture)
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation=attention)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    requests = _rag_length_requests()
    forwards = []
    model.register_forward_hook(lambda module, args, kwargs_out: forwards.append(1))
    shared = LoglikelihoodScorer(model, tokenizer, batch_size=3, max_length=1000)
    assert shared.share_prefix
    fast = shared.loglikelihood(requests)
    packed_forwards = len(forwards)
    forwards.clear()
    separate = LoglikelihoodScorer(
        model, tokenizer, batch_size=3, max_length=1000, share_prefix=False
    ).loglikelihood(requests)
    assert max(abs(a.logprob - b.logprob) for a, b in zip(fast, separate)) <= 1e-4
    encoded = [shared.encode_pair(context, option) for context, option in requests]
    assert_same_greedy(model, encoded, [a.is_greedy for a in fast], [b.is_greedy for b in separate])
    # The 4 RAG questions begin with the same passage and the 3 5-shot questions with the
    # same examples: each run once into a cache (2 passes), then the rest of each question
    # with its options packed (2 + 1 passes of up to 3 rows); the letters and the 2 empty
    # contexts are 3 packed sequences (1 pass); the 2 truncated pairs go alone (1 pass).
    # Separately: 33 sequences in 11 passes of 3.
    assert packed_forwards == 7 and len(forwards) == 11


def test_prefix_clusters_share_the_prefix_that_runs_fewest_tokens():
    from kinject.scoring.loglikelihood import _pack, _prefix_clusters

    shared, x, y = list(range(100)), list(range(200, 280)), list(range(300, 380))
    contexts = [shared + x + [7], shared + x + [8], shared + y + [7], shared + y + [8]]
    contexts.append(list(range(500, 580)))  # nothing in common with the others
    encoded = [(context, [1, 2]) for context in contexts]
    packed = [_pack(encoded, [i]) for i in range(len(encoded))]
    # Sharing the first 100 tokens among four runs 100 + 4 × 82 tokens; two caches of 180
    # tokens each run 2 × (180 + 2 × 2): fewer.
    assert _prefix_clusters(packed) == [(180, [0, 1]), (180, [2, 3])]
    # Two contexts sharing less than the minimum are left alone; a context is never shared
    # whole (its last token predicts the options' first).
    short = [
        _pack([(list(range(40)) + [1], [5]), (list(range(40)) + [2], [5])], [i]) for i in (0, 1)
    ]
    assert _prefix_clusters(short, minimum=41) == []
    assert _prefix_clusters(short, minimum=40) == [(40, [0, 1])]
    same = [_pack([(list(range(50)), [5]), (list(range(50)), [6])], [i]) for i in (0, 1)]
    assert _prefix_clusters(same) == [(49, [0, 1])]


def test_a_model_whose_cache_cannot_be_shared_scores_without_it(bpe_tokenizer):
    """Sliding-window layers keep only their window: no shared prefix cache, the same scores."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    model = MistralForCausalLM(
        MistralConfig(
            vocab_size=len(bpe_tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            sliding_window=4096,
            max_position_embeddings=2048,
        )
    )
    requests = _rag_length_requests()
    fast = LoglikelihoodScorer(model, bpe_tokenizer, batch_size=3, max_length=1000)
    scores = fast.loglikelihood(requests)
    assert not fast._prefix_cache  # tried once on the first shared prefix, then off
    separate = LoglikelihoodScorer(
        model, bpe_tokenizer, batch_size=3, max_length=1000, share_prefix=False
    ).loglikelihood(requests)
    assert max(abs(a.logprob - b.logprob) for a, b in zip(scores, separate)) <= 1e-4
    encoded = [fast.encode_pair(context, option) for context, option in requests]
    assert_same_greedy(
        model, encoded, [a.is_greedy for a in scores], [b.is_greedy for b in separate]
    )
