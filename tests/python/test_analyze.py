"""`pe analyze` on a short training run: its JSON, and its TensorBoard events read back by the
real TensorBoard (histograms, scalars, text, and the HParams dashboard's session groups)."""

import json

from tensorboard import context
from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins import base_plugin
from tensorboard.plugins.hparams import api_pb2, backend_context, list_session_groups

from conftest import run_pe
from test_tensorboard import RECIPE, make_image_folder


def train_tiny_run(tmp_path):
    """The 1-block ViT-PE recipe of test_tensorboard, trained for 2 epochs on 16 images."""
    make_image_folder(tmp_path / "data")
    recipe = tmp_path / "tb.toml"
    recipe.write_text(RECIPE.format(data=tmp_path / "data", runs=tmp_path / "runs"))
    run_pe("train", recipe)
    return tmp_path / "runs" / "tb"


def session_groups(logdir):
    """What the HParams dashboard lists: TensorBoard's own handler over a multiplexer of `logdir`."""
    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(logdir))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
    tb_context = base_plugin.TBContext(logdir=str(logdir), multiplexer=multiplexer, data_provider=provider)
    # The dashboard asks for every status.
    statuses = [api_pb2.STATUS_UNKNOWN, api_pb2.STATUS_SUCCESS, api_pb2.STATUS_FAILURE, api_pb2.STATUS_RUNNING]
    request = api_pb2.ListSessionGroupsRequest(start_index=0, slice_size=10, allowed_statuses=statuses)
    handler = list_session_groups.Handler(context.RequestContext(), backend_context.Context(tb_context), "", request)
    return handler.run().session_groups


def test_analyze_run_json_and_tensorboard(tmp_path):
    run_dir = train_tiny_run(tmp_path)
    out = run_pe("analyze", run_dir, "--data", "--batches", "2", "--format", "json",
                 "--tensorboard", tmp_path / "tb", "--figures", tmp_path / "figures")
    [report] = json.loads(out.stdout)
    assert report["label"] == "tb" and report["batches"] == 2
    assert report["run"]["top1"] is not None
    # patch embedding, W_q, W_kv, the MLP's W, head; three tied pairs, all 1 by construction.
    assert [m["name"] for m in report["matrices"]] == [
        "patch_embed.proj.weight", "blocks.0.attn.wq", "blocks.0.attn.wkv", "blocks.0.mlp.weight", "head.weight"]
    assert report["matrices"][0]["layout"] == {"kind": "conv_reshaped", "kh": 4, "kw": 4}
    assert len(report["pairs"]) == 3
    for pair in report["pairs"]:
        assert pair["tied"] and abs(pair["full"]["mean_cos2"] - 1) < 1e-4
    # q/proj and the MLP read a measured activation; k/v reads the block input, not a hidden one.
    measured = {p["kind"]: p["energy_outside"] for p in report["pairs"]}
    assert measured["attn_kv"] is None
    for kind in ("attn_q_proj", "mlp_fc1_fc2"):
        assert 0.0 <= measured[kind]["full_rank"] <= measured[kind]["effective_rank"] <= 1.0
    assert {p.name for p in (tmp_path / "figures").iterdir()} == {"spectra_tb.svg", "weight_space.svg"}

    events = EventAccumulator(str(tmp_path / "tb" / "tb"), size_guidance={"histograms": 0, "tensors": 0})
    events.Reload()
    tags = events.Tags()
    # One singular value per min(m, n): W_kv is 24×24.
    histogram = events.Histograms("spectrum/blocks.0.attn.wkv")[0].histogram_value
    assert histogram.num == 24 and sum(histogram.bucket) == 24
    assert histogram.max == max(next(m for m in report["matrices"] if m["name"] == "blocks.0.attn.wkv")["singular_values"])
    for tag in ["weights/blocks.0.mlp.weight/effective_rank", "pairs/blocks.0.mlp/mlp_fc1_fc2/overlap_dominant",
                "weight_space/mlp/rank_ratio", "run/top1"]:
        assert tag in tags["scalars"], tag
    config_text = events.Tensors("config")[0].tensor_proto.string_val[0].decode()
    assert "[model]" in config_text and 'arch = "vit"' in config_text

    [group] = session_groups(tmp_path / "tb")
    hparams = {name: value for name, value in group.hparams.items()}
    assert hparams["model.embed_dim"].number_value == 24
    assert hparams["optimizer.name"].string_value == "adamw"
    assert hparams["model.pe_mlp"].bool_value is True
    [session] = group.sessions
    assert session.status == api_pb2.STATUS_SUCCESS
    metrics = {m.name.tag: m.value for m in session.metric_values}
    assert abs(metrics["run/top1"] - report["run"]["top1"]) < 1e-4
    assert abs(metrics["weight_space/mlp_fc1_fc2/overlap_dominant"] - 1.0) < 1e-4


def test_analyze_compares_weight_files_side_by_side(tmp_path):
    run_dir = train_tiny_run(tmp_path)
    weights = run_dir / "checkpoints" / "last" / "model.safetensors"
    out = run_pe("analyze", weights, weights, "--format", "markdown")
    # The same weights twice: two columns with the same numbers, labels made unique.
    header = next(line for line in out.stdout.splitlines() if line.startswith("| block type"))
    assert [cell.strip() for cell in header.strip("|").split("|")] == ["block type", "metric", "tb", "tb-2"]
    out = run_pe("analyze", weights, "--format", "csv")
    matrices, pairs = out.stdout.strip().split("\n\n")
    assert len(matrices.splitlines()) == 1 + 5 and len(pairs.splitlines()) == 1 + 3
