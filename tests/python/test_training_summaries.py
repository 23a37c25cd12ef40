"""What training itself writes to TensorBoard beyond scalars, read back by the real TensorBoard: the
resolved recipe as text, an HParams session with the final metrics, and (with
`logging.analyze_every_epochs`) the weight-space analysis per epoch."""

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2

from conftest import run_pe
from test_analyze import session_groups
from test_tensorboard import RECIPE, make_image_folder


def test_a_run_logs_its_recipe_hparams_and_weight_space_analysis(tmp_path):
    make_image_folder(tmp_path / "data")
    recipe = tmp_path / "tb.toml"
    recipe.write_text(RECIPE.format(data=tmp_path / "data", runs=tmp_path / "runs"))
    run_pe("train", recipe, "--set", "logging.analyze_every_epochs=1")
    run_dir = tmp_path / "runs" / "tb"

    events = EventAccumulator(str(run_dir), size_guidance={"histograms": 0, "tensors": 0, "scalars": 0})
    events.Reload()
    config_text = events.Tensors("config")[0].tensor_proto.string_val[0].decode()
    assert "[model]" in config_text and "analyze_every_epochs = 1" in config_text
    # One analysis per epoch (16 images / batch 4 = 4 steps each); W_kv is 24×24: 24 singular values.
    spectra = events.Histograms("spectrum/blocks.0.attn.wkv")
    assert [s.step for s in spectra] == [4, 8]
    assert all(s.histogram_value.num == 24 for s in spectra)
    overlap = events.Scalars("pairs/blocks.0.mlp/mlp_fc1_fc2/overlap_dominant")
    assert [round(e.value, 4) for e in overlap] == [1.0, 1.0], "a tied pair overlaps by construction"

    [group] = session_groups(tmp_path / "runs")
    hparams = dict(group.hparams.items())
    assert hparams["model.embed_dim"].number_value == 24
    assert hparams["train.batch_size"].number_value == 4
    assert "logging.runs_dir" not in hparams and "data.root" not in hparams
    [session] = group.sessions
    assert session.status == api_pb2.STATUS_SUCCESS
    metrics = {m.name.tag: m.value for m in session.metric_values}
    final = events.Scalars("eval/acc1")[-1].value
    assert abs(metrics["eval/acc1"] - final) < 1e-6


def test_the_analysis_is_logged_when_max_steps_ends_the_run(tmp_path):
    """train.max_steps ends the run inside epoch 2 (step 6 of 8): the run's last analysis is at that step,
    beside the evaluation that the early end brings forward."""
    make_image_folder(tmp_path / "data")
    recipe = tmp_path / "tb.toml"
    recipe.write_text(RECIPE.format(data=tmp_path / "data", runs=tmp_path / "runs"))
    run_pe("train", recipe, "--set", "logging.analyze_every_epochs=1", "--set", "train.max_steps=6")

    events = EventAccumulator(str(tmp_path / "runs" / "tb"), size_guidance={"histograms": 0, "scalars": 0})
    events.Reload()
    assert [s.step for s in events.Histograms("spectrum/blocks.0.attn.wkv")] == [4, 6]
    assert events.Scalars("eval/acc1")[-1].step == 6
