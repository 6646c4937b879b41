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
