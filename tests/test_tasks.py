import numpy as np
import pytest

from fedlib.tasks import TASKS, TaskDataError, compute_metric, get_task, load_task

# (task, split) -> rows in the shipped data/ folder (counts from data/README.md)
SHIPPED = {
    ("sst2", "train"): 67349,
    ("sst2", "eval"): 872,
    ("cola", "train"): 8551,
    ("cola", "eval"): 1043,
    ("mrpc", "train"): 3668,
    ("mrpc", "eval"): 408,
    ("rte", "train"): 2490,
    ("rte", "eval"): 277,
    ("mr", "train"): 7662,
    ("mr", "eval"): 2000,
    ("qnli", "eval"): 5463,
}


@pytest.mark.parametrize("task,split", sorted(SHIPPED))
def test_shipped_data_loads_with_documented_columns(task, split):
    ds = load_task(task, split)
    spec = get_task(task)
    assert len(ds) == SHIPPED[(task, split)]
    assert ds.column_names == (["text", "text_pair", "label"] if spec.is_pair else ["text", "label"])
    assert ds.features["label"].names == list(spec.label_names)
    labels = np.asarray(ds["label"])
    assert set(np.unique(labels)) == set(range(spec.num_labels))
    assert all(isinstance(t, str) and t for t in ds["text"][:50])


def test_label_counts_match_the_provenance():
    assert np.bincount(load_task("sst2", "train")["label"]).tolist() == [29780, 37569]
    assert np.bincount(load_task("rte", "train")["label"]).tolist() == [1249, 1241]
    assert np.bincount(load_task("cola", "train")["label"]).tolist() == [2528, 6023]


FIXTURES = {  # task -> (train file content, expected labels)
    "boolq": (
        "question\tpassage\tlabel\nis it blue\tthe sky is blue\tTrue\nis it red\tgrass is green\tFalse\n",
        [1, 0],
    ),
    "mpqa": ("sentence\tlabel\ngood thing\t1\nbad thing\t0\n", [1, 0]),
    "subj": ("sentence\tlabel\ni love it\t0\nit was filmed in 1999\t1\n", [0, 1]),
    "trec": ("question\tlabel\nwho wrote it\tHUM\nwhere is paris\tLOC\nwhat is nasa\tABBR\n", [3, 4, 2]),
    "qnli": ("index\tquestion\tsentence\tlabel\n0\twho\the did\tentailment\n1\twhen\tno\tnot_entailment\n", [0, 1]),
}


@pytest.mark.parametrize("task", sorted(FIXTURES))
def test_unshipped_tasks_load_from_documented_layout(task, tmp_path):
    spec = get_task(task)
    content, labels = FIXTURES[task]
    (tmp_path / spec.folder).mkdir()
    for split in ("train", "eval"):
        (tmp_path / spec.folder / spec.files[split]).write_text(content)
    for split in ("train", "eval"):
        ds = load_task(task, split, data_dir=tmp_path)
        assert ds["label"] == labels
        assert ("text_pair" in ds.column_names) == spec.is_pair


def test_fedlib_data_env_points_tasks_elsewhere(tmp_path, monkeypatch):
    (tmp_path / "mpqa").mkdir()
    (tmp_path / "mpqa" / "train.tsv").write_text(FIXTURES["mpqa"][0])
    monkeypatch.setenv("FEDLIB_DATA", str(tmp_path))
    assert len(load_task("mpqa", "train")) == 2


@pytest.mark.parametrize("task", ["boolq", "mpqa", "subj", "trec"])
def test_missing_files_offline_name_task_folder_and_columns(task, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = get_task(task)
    with pytest.raises(TaskDataError) as err:
        load_task(task, "train", data_dir=tmp_path)
    msg = str(err.value)
    assert f"task {task!r}" in msg and str(tmp_path / spec.folder) in msg and "offline" in msg
    assert all(c in msg for c in spec.columns if c is not None)


def test_qnli_train_is_not_shipped_and_says_so(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TaskDataError, match=r"qnli.*train.tsv"):
        load_task("qnli", "train")


def _write(tmp_path, folder, content: bytes):
    (tmp_path / folder).mkdir(exist_ok=True)
    (tmp_path / folder / "train.tsv").write_bytes(content)


@pytest.mark.parametrize(
    "content,needle",
    [
        (b"text\tlabel\nfine\t1\n", ":1: missing column(s) ['sentence']"),
        (b"sentence\tlabel\nfine\t1\nbroken row\n", ":3: 1 tab-separated fields, expected 2"),
        (b"sentence\tlabel\nfine\t1\nodd\t7\n", ":3: label '7' is not one of ['0', '1']"),
        (b"", "the file has no data rows"),
        (b"sentence\tlabel\n", "the file has no data rows"),
        (b"sentence\tlabel\nfine\t1\nbad \xff\xfe bytes\t0\n", ":3: bytes are not valid UTF-8"),
    ],
)
def test_malformed_tsv_reports_file_line_and_expectation(tmp_path, content, needle):
    _write(tmp_path, "sst-2", content)
    with pytest.raises(TaskDataError) as err:
        load_task("sst2", "train", data_dir=tmp_path)
    assert str(tmp_path / "sst-2" / "train.tsv") in str(err.value)
    assert needle in str(err.value)


def test_headerless_cola_wrong_field_count(tmp_path):
    _write(tmp_path, "cola", b"gj04\t1\t\tok sentence.\ngj04\t1\tonly three\n")
    with pytest.raises(TaskDataError, match=r"train.tsv:2: 3 tab-separated fields, expected 4"):
        load_task("cola", "train", data_dir=tmp_path)


def test_unknown_task_lists_valid_names():
    with pytest.raises(KeyError, match="valid tasks are.*'boolq'.*'trec'"):
        get_task("imdb")
    assert len(TASKS) == 10


def test_metrics_against_known_values():
    # accuracy
    assert compute_metric("sst2", [1, 0, 1, 1], [1, 0, 0, 1])["metric"] == pytest.approx(0.75)
    # MCC from the confusion matrix tp=2, tn=1, fp=1, fn=0: (2*1 - 1*0)/sqrt(3*2*1*2)
    m = compute_metric("cola", [1, 0, 1, 1], [1, 0, 0, 1])
    assert m["metric"] == pytest.approx(2 / np.sqrt(12))
    # MRPC: acc 0.75, F1 (positive class) = 2*2/(2*2+1+0) = 0.8 -> (0.75+0.8)/2
    m = compute_metric("mrpc", [1, 0, 1, 1], [1, 0, 0, 1])
    assert (m["accuracy"], m["f1"], m["metric"]) == pytest.approx((0.75, 0.8, 0.775))
    # all-constant predictions give MCC 0, not NaN
    assert compute_metric("cola", [1, 1, 1], [0, 1, 1])["metric"] == 0.0
    with pytest.raises(ValueError):
        compute_metric("sst2", [], [])
