"""lm-evaluation-harness task YAML for local JSONL files, shared by the parity tests.

Each is a ``str.format`` template of ``name``, ``test`` and ``dev`` (doubled braces are
lm-eval's Jinja)."""

from __future__ import annotations

_TASK_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {test}
    dev: {dev}
test_split: test
fewshot_split: dev
fewshot_config:
  sampler: first_n
output_type: multiple_choice
doc_to_text: "DOC_TO_TEXT"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
"""

# the option style: "Question: {question}\nAnswer:" + " {choice}"
OPTION_TASK_YAML = _TASK_YAML.replace("DOC_TO_TEXT", "Question: {{{{question}}}}\\nAnswer:")
# the cloze style: the text as it is + " {choice}", the delimiters written out
CLOZE_TASK_YAML = (
    _TASK_YAML.replace("DOC_TO_TEXT", "{{{{question}}}}")
    + 'target_delimiter: " "\nfewshot_delimiter: "\\n\\n"\n'
)


def lm_eval_task(task_dir, name: str, shots: int, chat_lm=None, multiturn: bool = True):
    """lm-eval's task ``name`` from ``task_dir`` with its requests built, as its evaluator
    builds them; ``chat_lm`` (an ``HFLM``): with ``--apply_chat_template``."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    task = manager.load([name])["tasks"][name]
    task.set_config(key="num_fewshot", value=shots)
    task.set_fewshot_seed(seed=1234)
    chat = {}
    if chat_lm is not None:
        chat = {
            "apply_chat_template": True,
            "fewshot_as_multiturn": multiturn,
            "chat_template": chat_lm.apply_chat_template,
        }
    task.build_all_requests(limit=None, rank=0, world_size=1, **chat)
    return task


def by_doc(task) -> list[list]:
    """lm-eval's requests grouped per document, choices in order."""
    docs: dict[int, list] = {}
    for instance in task.instances:
        docs.setdefault(instance.doc_id, []).append(instance)
    return [sorted(docs[i], key=lambda inst: inst.idx) for i in sorted(docs)]


def write_mmlu_tasks(folder):
    """lm-eval tasks ``local_mmlu_<subject>`` that include lm-eval's real
    ``mmlu_<subject>.yaml``, the data pointed at the shared CSVs (as ``cais/mmlu`` rows)."""
    import json
    from pathlib import Path

    import lm_eval

    from conftest import MMLU_DIR, MMLU_SUBJECTS
    from kinject.tasks.loaders import load_mmlu_csv

    base = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default"
    for subject in MMLU_SUBJECTS:
        files = {}
        for split in ("test", "dev"):
            path = folder / f"{subject}_{split}.jsonl"
            with path.open("w", encoding="utf-8") as handle:
                for item in load_mmlu_csv(MMLU_DIR / split / f"{subject}_{split}.csv"):
                    row = {
                        "question": item.question,
                        "subject": subject,
                        "choices": list(item.choices),
                        "answer": item.answer,
                    }
                    handle.write(json.dumps(row) + "\n")
            files[split] = path
        (folder / f"local_mmlu_{subject}.yaml").write_text(
            f"include: {base / f'mmlu_{subject}.yaml'}\n"
            f"task: local_mmlu_{subject}\n"
            "dataset_path: json\n"
            "dataset_name: null\n"
            f"dataset_kwargs:\n  data_files:\n    test: {files['test']}\n    dev: {files['dev']}\n"
        )
    return folder
