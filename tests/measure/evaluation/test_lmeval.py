"""lm-eval tasks on the local benchmark datasets, the result cache and `pvq eval`'s input checks."""

from __future__ import annotations

import math

import datasets
import pytest
import torch
from tiny_models import tiny_model, tiny_tokenizer

from measure.data.benchmarks import benchmark_datasets_dir
from measure.evaluation.lmeval import (
    TASKS,
    group_averages,
    metric_rows,
    resolve_tasks,
    run_lm_eval,
)
from measure.evaluation.results import EvalKey, ResultCache
from pvq.cli import main
from theory.errors import PvqError

LETTERS = "ABCDE"


def csqa_prompt(doc: dict) -> str:
    """lm-eval's CommonsenseQA prompt, written out independently of our YAML."""
    options = "".join(f"\n{letter}. {text}" for letter, text in zip(LETTERS, doc["choices"]["text"], strict=True))
    return f"Question: {doc['question'].strip()}{options}\nAnswer:"


@torch.no_grad()
def letter_log_likelihoods(model: torch.nn.Module, tokenizer, doc: dict) -> list[float]:
    """log p(" X" | prompt) for X = A..E: the continuation's token log-probabilities summed."""
    prompt = tokenizer(csqa_prompt(doc), add_special_tokens=False).input_ids
    scores = []
    for letter in LETTERS:
        whole = tokenizer(csqa_prompt(doc) + " " + letter, add_special_tokens=False).input_ids
        log_p = torch.log_softmax(model(torch.tensor([whole])).logits[0].double(), -1)
        scores.append(sum(float(log_p[i - 1, whole[i]]) for i in range(len(prompt), len(whole))))
    return scores


def test_csqa_subset_runs_offline_and_scores_like_a_direct_computation(tmp_path) -> None:
    """10 real validation questions, relabelled so the tiny model is right on exactly the first 5;
    lm-eval must see our prompts and compute our log-likelihoods."""
    model, tokenizer = tiny_model("llama"), tiny_tokenizer()
    source = datasets.load_from_disk(str(benchmark_datasets_dir() / "tau/commonsense_qa/none/validation"))
    docs = [source[i] for i in range(10)]
    expected = [letter_log_likelihoods(model, tokenizer, doc) for doc in docs]
    for i, (doc, scores) in enumerate(zip(docs, expected, strict=True)):
        best = max(range(5), key=scores.__getitem__)
        doc["answerKey"] = LETTERS[best if i < 5 else (best + 1) % 5]
    datasets.Dataset.from_list(docs, features=source.features).save_to_disk(
        str(tmp_path / "tau/commonsense_qa/none/validation")
    )
    output = run_lm_eval(
        model, tokenizer, resolve_tasks(["csqa"])[0], limit=10, datasets_dir=tmp_path, log_samples=True
    )
    for sample in output["samples"]["pvq_csqa"]:
        doc = docs[sample["doc_id"]]
        assert sample["arguments"] == [(csqa_prompt(doc), " " + letter) for letter in LETTERS]
        scores = [response[0][0] for response in sample["resps"]]
        assert scores == pytest.approx(expected[sample["doc_id"]], rel=1e-4)
    by_metric = {row["metric"]: row for row in metric_rows(output)}
    assert set(by_metric) == {"acc", "acc_norm"}
    assert by_metric["acc"]["value"] == pytest.approx(0.5)
    assert by_metric["acc_norm"]["value"] == pytest.approx(0.5)
    assert by_metric["acc"]["stderr"] == pytest.approx(math.sqrt(0.25 / 9))
    assert by_metric["acc"]["n"] == 10 and by_metric["acc"]["num_fewshot"] == 0


def mmlu_question(doc: dict, cloze: bool) -> str:
    """lm-eval's MMLU question (options listed as A–D), or the cloze form (question only)."""
    if cloze:
        return f"{doc['question'].strip()}\nAnswer:"
    options = "".join(f"\n{letter}. {text}" for letter, text in zip("ABCD", doc["choices"], strict=True))
    return f"{doc['question'].strip()}{options}\nAnswer:"


def mmlu_answers(doc: dict, cloze: bool) -> list[str]:
    return list(doc["choices"]) if cloze else list("ABCD")


@pytest.mark.parametrize("name", ["mmlu", "mmlu_cloze"])
def test_mmlu_runs_five_shot_over_57_subjects(name: str) -> None:
    """The standard 5-shot prompt: subject description, the first five dev questions answered, the question."""
    cloze = name.endswith("cloze")
    request = resolve_tasks([name])[0]
    output = run_lm_eval(tiny_model("llama"), tiny_tokenizer(), request, limit=1, log_samples=True)
    rows = metric_rows(output)
    subjects = {row["subtask"] for row in rows if row["subtask"]}
    assert len(subjects) == 57 and "abstract_algebra" in subjects
    assert sum(counts["original"] for counts in output["n-samples"].values()) == 14042
    micro = next(row for row in rows if row["metric"] == "acc_micro")
    assert micro["value"] == pytest.approx(output["results"][f"pvq_{name}"]["acc,none"], rel=1e-12)
    assert micro["n"] == 57 and micro["num_fewshot"] == 5
    folder = benchmark_datasets_dir() / "hails/mmlu_no_train/abstract_algebra"
    dev, test = (datasets.load_from_disk(str(folder / split)) for split in ("dev", "test"))
    shots = [
        mmlu_question(doc, cloze) + " " + mmlu_answers(doc, cloze)[doc["answer"]] for doc in dev.select(range(5))
    ]
    description = "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
    expected = description + "\n\n".join([*shots, mmlu_question(test[0], cloze)])
    sample = output["samples"][f"pvq_{name}::abstract_algebra"][0]
    assert sample["arguments"] == [(expected, " " + answer) for answer in mmlu_answers(test[0], cloze)]


@pytest.mark.parametrize(
    ("name", "size", "metrics"),
    [
        ("csqa", 1221, {"acc", "acc_norm"}),
        ("csqa_cloze", 1221, {"acc", "acc_norm"}),
        ("arc_easy", 570, {"acc", "acc_norm"}),
        ("arc_challenge", 299, {"acc", "acc_norm"}),
        ("hellaswag", 10042, {"acc", "acc_norm"}),
        ("piqa", 1838, {"acc", "acc_norm"}),
        ("winogrande", 1267, {"acc"}),
    ],
)
def test_every_task_reads_its_full_local_split(name: str, size: int, metrics: set[str]) -> None:
    request = resolve_tasks([name])[0]
    output = run_lm_eval(tiny_model("llama"), tiny_tokenizer(), request, limit=2)
    assert output["n-samples"][request.lm_eval_name] == {"original": size, "effective": 2}
    rows = metric_rows(output)
    assert {row["metric"] for row in rows} == metrics
    assert all(0 <= row["value"] <= 1 and row["n"] == 2 for row in rows)


def test_group_averages_weight_subtasks_as_documented() -> None:
    rows = [
        {"subtask": "a", "metric": "acc", "value": 1.0, "stderr": 0.3, "n": 1, "num_fewshot": 5},
        {"subtask": "b", "metric": "acc", "value": 0.0, "stderr": 0.4, "n": 3, "num_fewshot": 5},
    ]
    averages = {row["metric"]: row for row in group_averages(rows)}
    assert averages["acc_macro"]["value"] == pytest.approx(0.5)
    assert averages["acc_macro"]["stderr"] == pytest.approx(0.25)
    assert averages["acc_micro"]["value"] == pytest.approx(0.25)
    assert averages["acc_micro"]["stderr"] == pytest.approx(math.sqrt(0.09 + 1.44) / 4)


def test_unknown_task_lists_the_valid_ones() -> None:
    with pytest.raises(PvqError) as error:
        resolve_tasks(["csqa", "mmlu_pro"])
    assert all(name in str(error.value) for name in TASKS)
    assert resolve_tasks(["lm_eval:lambada_openai"])[0].stock


def test_cache_never_recomputes_and_keys_differ_by_protocol(tmp_path) -> None:
    cache, calls = ResultCache(tmp_path), []

    def compute() -> list[dict]:
        calls.append(1)
        return [{"metric": "acc", "value": 0.25, "stderr": 0.1, "n": 4, "num_fewshot": 0}]

    key = EvalKey("abc", "none", "csqa", {"limit": 4})
    first, cached_first = cache.get_or_compute(key, "tiny", compute)
    second, cached_second = cache.get_or_compute(key, "tiny", compute)
    assert (cached_first, cached_second, len(calls)) == (False, True, 1)
    assert first == second and first[0]["limit"] == 4
    cache.get_or_compute(EvalKey("abc", "none", "csqa", {"limit": 5}), "tiny", compute)
    assert len(calls) == 2
    table = cache.write_table()
    assert sorted(cache.table()["limit"]) == [4, 5] and table.exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["eval", "--tasks", "csqa,nope"], "valid tasks: csqa, mmlu"),
        (["eval"], "nothing to evaluate"),
        (["eval", "--tasks", "csqa", "--limit", "0"], "--limit"),
        (["eval", "--tasks", "csqa", "--compress", "no such spec!"], "spec"),
    ],
)
def test_eval_command_rejects_bad_input_before_loading_a_model(argv, message, capsys) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err
