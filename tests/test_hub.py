"""Pretrained weights by name: the tables are torchvision's and timm's, downloads are verified and
cached (against a real HTTP server on 127.0.0.1, never the internet), and the ImageNet-1k class
names are torchvision's."""

import hashlib
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

import references
import resnet_jax
from resnet_jax import hub, inference
from resnet_jax.hub import cache
from resnet_jax.interop.convert import to_torchvision


class _Server(http.server.ThreadingHTTPServer):
  """Serves a folder's files at /files/NAME (half of them at /cut/NAME and /slow/NAME); /hf/NAME
  redirects there as Hugging Face does, with the file's SHA-256 in X-Linked-Etag (none at
  /hf-nodigest/NAME). Counts the GETs."""

  daemon_threads, block_on_close = True, False  # a stalled reply does not hold the teardown

  def __init__(self, root):
    self.root, self.gets, self.stalled = root, [], threading.Event()
    super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(http.server.BaseHTTPRequestHandler):
  def do_GET(self):  # noqa: N802 - http.server's name
    self.server.gets.append(self.path)
    kind, _, name = self.path.lstrip("/").partition("/")
    path = os.path.join(self.server.root, name)
    if not os.path.exists(path):
      self.send_error(404)
    elif kind in ("hf", "hf-nodigest"):
      self.send_response(302)
      self.send_header("Location", f"/files/{name}")
      if kind == "hf":
        with open(path, "rb") as f:
          self.send_header(cache.DIGEST_HEADER, f'"{hashlib.sha256(f.read()).hexdigest()}"')
      self.end_headers()
    else:
      with open(path, "rb") as f:
        data = f.read()
      self.send_response(200)
      self.send_header("Content-Length", str(len(data)))
      self.end_headers()
      # "cut": the connection drops halfway through; "slow": half, then nothing for a minute.
      self.wfile.write(data if kind == "files" else data[:len(data) // 2])
      self.wfile.flush()
      if kind == "slow":
        self.server.stalled.set()
        time.sleep(60)
      self.close_connection = True

  def log_message(self, *args):
    pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
  server = _Server(str(tmp_path_factory.mktemp("served")))
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  yield server
  server.shutdown()
  server.server_close()


@pytest.fixture(scope="module")
def published(server):
  """A small network's weights in torchvision's layout, served as .safetensors: (variables, file
  name, SHA-256)."""
  model = resnet_jax.create_model("resnet8", num_classes=10)
  variables = jax.device_get(model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))))
  variables = jax.tree.map(lambda x: x + np.random.RandomState(1).randn(*x.shape).astype(x.dtype)
                           * 0.01, variables)  # statistics other than 0 and 1 too
  name = "resnet8-digits.safetensors"
  path = os.path.join(server.root, name)
  safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in
                               to_torchvision(variables, model).items()}, path)
  with open(path, "rb") as f:
    digest = hashlib.sha256(f.read()).hexdigest()
  return variables, name, digest


def entry(server, tag, file, sha256, route="files"):
  """Registers weights served by the test server (a fork registers its own the same way)."""
  return hub.register_weights(hub.Weights(
      name=f"test:resnet8.{tag}", model="resnet8",
      url=f"http://127.0.0.1:{server.server_address[1]}/{route}/{file}", sha256=sha256,
      num_classes=10, image_size=8, crop_ratio=1.0, mean=(0.5,) * 3, std=(0.25,) * 3),
      replace=True)


def files_under(folder):
  return sorted(os.path.relpath(os.path.join(d, f), folder)
                for d, _, names in os.walk(folder) for f in names)


def test_first_load_downloads_then_the_converted_cache_serves(server, published, tmp_path):
  variables, file, digest = published
  entry(server, "first", file, digest)
  before = len(server.gets)
  model, loaded = resnet_jax.create_model("resnet8", pretrained="test:resnet8.first",
                                          cache_dir=str(tmp_path))
  assert len(server.gets) == before + 1
  chex.assert_trees_all_equal(loaded, variables)
  assert model.num_classes == 10
  weights = hub.load("test:resnet8.first", cache_dir=str(tmp_path))
  assert len(server.gets) == before + 1  # the converted variables, no download
  chex.assert_trees_all_equal(weights.variables, variables)
  assert weights.preprocessing.mean == (127.5,) * 3 and weights.preprocessing.std == (63.75,) * 3
  # A damaged converted folder is converted again from the verified download, offline.
  description = tmp_path / "converted" / "test" / "resnet8.first" / "model.json"
  damaged = json.loads(description.read_text())
  damaged["checksums"] = {k: "0" for k in damaged["checksums"]}
  description.write_text(json.dumps(damaged))
  chex.assert_trees_all_equal(hub.load("test:resnet8.first", cache_dir=str(tmp_path)).variables,
                              variables)
  assert len(server.gets) == before + 1
  assert json.loads(description.read_text())["checksums"] != damaged["checksums"]
  # Without the converted folder, the verified download is converted again, offline.
  shutil.rmtree(tmp_path / "converted")
  chex.assert_trees_all_equal(hub.load("test:resnet8.first", cache_dir=str(tmp_path)).variables,
                              variables)
  assert len(server.gets) == before + 1
  assert not [f for f in files_under(tmp_path) if ".tmp-" in f]


def test_the_cache_folder_comes_from_the_environment(server, published, tmp_path, monkeypatch):
  variables, file, digest = published
  entry(server, "env", file, digest[:8])  # torchvision's published hash prefix
  monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path))
  _, loaded = resnet_jax.create_model("resnet8", pretrained="test:resnet8.env")
  chex.assert_trees_all_equal(loaded, variables)
  assert f"downloads/test/resnet8.env/{file}" in files_under(tmp_path)


def test_a_download_that_is_not_the_published_file_is_deleted_and_refused(server, published,
                                                                          tmp_path):
  _, file, digest = published
  wrong = "0" * 64 if digest[0] != "0" else "1" * 64
  entry(server, "corrupt", file, wrong)
  with pytest.raises(ValueError, match=r"^The download of test:resnet8.corrupt has SHA-256 "
                                       rf"{digest[:16]}\.\.\., not the published {wrong[:16]}"
                                       r"\.\.\.; it was deleted\. Download it again"):
    hub.load("test:resnet8.corrupt", cache_dir=str(tmp_path))
  assert files_under(tmp_path) == []


def test_a_download_cut_short_leaves_nothing_and_says_so(server, published, tmp_path):
  _, file, digest = published
  weights = entry(server, "cut", file, digest, route="cut")
  with pytest.raises(FileNotFoundError, match=rf"^Cannot download test:resnet8.cut from "
                                              rf"{weights.url} \(.*\); without a network, "):
    hub.load("test:resnet8.cut", cache_dir=str(tmp_path))
  assert files_under(tmp_path) == []


def test_the_servers_digest_verifies_a_file_without_a_published_one(server, published, tmp_path):
  variables, file, _ = published
  entry(server, "hf", file, None, route="hf")
  chex.assert_trees_all_equal(hub.load("test:resnet8.hf", cache_dir=str(tmp_path)).variables,
                              variables)
  entry(server, "nodigest", file, None, route="hf-nodigest")
  with pytest.raises(ValueError, match="came without a published SHA-256, so it cannot be "
                                       "verified; check the file yourself and place it at "):
    hub.load("test:resnet8.nodigest", cache_dir=str(tmp_path))
  assert not [f for f in files_under(tmp_path) if "nodigest" in f]


def test_offline_without_a_cache_says_which_file_to_place_where(server, published, tmp_path):
  variables, file, digest = published
  with socket.socket() as s:  # a port nothing listens on
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  weights = hub.register_weights(hub.Weights(
      name="test:resnet8.offline", model="resnet8", url=f"http://127.0.0.1:{port}/files/{file}",
      sha256=digest, num_classes=10, image_size=8, crop_ratio=1.0), replace=True)
  target = cache.download_path(weights, str(tmp_path))
  with pytest.raises(FileNotFoundError, match=(
      rf"^Cannot download test:resnet8.offline from {weights.url} \(.*\); without a network, "
      rf"download {weights.url} elsewhere and place it at {target}, then run the same command "
      r"again\.$")):
    hub.load("test:resnet8.offline", cache_dir=str(tmp_path))
  assert files_under(tmp_path) == []
  os.makedirs(os.path.dirname(target), exist_ok=True)
  with open(os.path.join(server.root, file), "rb") as src, open(target, "wb") as dst:
    dst.write(src.read())
  chex.assert_trees_all_equal(hub.load("test:resnet8.offline", cache_dir=str(tmp_path)).variables,
                              variables)
  with open(target, "r+b") as f:  # a file placed by hand that is not the published one
    f.seek(100)
    f.write(b"\x00\x01\x02")
  shutil.rmtree(tmp_path / "converted")
  with pytest.raises(ValueError, match=rf"^{target} is not the published test:resnet8.offline"):
    hub.load("test:resnet8.offline", cache_dir=str(tmp_path))
  assert os.path.exists(target)  # named, not deleted: the user placed it


@pytest.mark.parametrize("spec, model, message", [
    ("torchvision:resnet8", None, "No torchvision weights named 'torchvision:resnet8'; valid: "
                                  "torchvision:resnet101, "),
    ("nowhere:resnet50", None, "Unknown weights source 'nowhere' in 'nowhere:resnet50'; sources: "),
    ("timm:resnet50.a1_in1k", "resnet18", "timm:resnet50.a1_in1k are resnet50 weights, not "
                                          "resnet18; use create_model('resnet50', "),
    ("torchvision:IMAGENET1K_V9", "resnet50", "No torchvision weights named "
                                              "'torchvision:IMAGENET1K_V9' for resnet50; valid: "
                                              "torchvision:resnet50.IMAGENET1K_V1, "),
])
def test_unknown_weights_are_refused_naming_the_valid_ones(spec, model, message):
  with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(".", r"\.")):
    hub.resolve(spec, model)


def test_names_resolve_to_the_sources_defaults():
  assert hub.resolve("torchvision", "resnet50").name == "torchvision:resnet50.IMAGENET1K_V2"
  assert hub.resolve("torchvision:IMAGENET1K_V1", "resnet50").url.endswith("resnet50-0676ba61.pth")
  assert hub.resolve("torchvision:resnet18").name == "torchvision:resnet18.IMAGENET1K_V1"
  assert hub.resolve("timm", "resnet50").name == "timm:resnet50.a1_in1k"
  assert hub.is_name("torchvision:resnet50") and not hub.is_name("gs://bucket/run")
  assert not hub.is_name("runs/torchvision:x")


def test_the_torchvision_entries_are_torchvision_s_own_tables():
  tv = references.torchvision()
  import torch
  tables = {n: w for n, w in hub.WEIGHTS.items() if n.startswith("torchvision:")}
  published = {}
  for arch in {w.model for w in tables.values()} | {"resnet18", "resnet50", "wide_resnet101_2"}:
    enum = tv.models.get_model_weights(arch)
    for member in enum:
      t = member.transforms()
      published[f"torchvision:{arch}.{member.name}"] = dict(
          model=arch, url=member.url, default=member is enum.DEFAULT,
          sha256=re.search(torch.hub.HASH_REGEX, os.path.basename(member.url)).group(1),
          num_classes=len(member.meta["categories"]), image_size=t.crop_size[0],
          crop_ratio=t.crop_size[0] / t.resize_size[0], mean=tuple(t.mean), std=tuple(t.std),
          interpolation=t.interpolation.value,
          accuracy=member.meta["_metrics"]["ImageNet-1K"]["acc@1"])
  assert sorted(tables) == sorted(published)
  for name, values in published.items():
    assert {k: getattr(tables[name], k) for k in values} == values, name


def test_the_timm_entries_are_timm_s_pretrained_configs():
  timm = references.timm()
  tables = {n: w for n, w in hub.WEIGHTS.items() if n.startswith("timm:")}
  for name, weights in tables.items():
    cfg = timm.models.get_pretrained_cfg(name.removeprefix("timm:"))
    assert weights.url == f"https://huggingface.co/{cfg.hf_hub_id}/resolve/main/model.safetensors"
    assert (weights.num_classes, weights.image_size, weights.crop_ratio, weights.mean,
            weights.std, weights.interpolation) == (cfg.num_classes, cfg.input_size[-1],
                                                    cfg.crop_pct, tuple(cfg.mean),
                                                    tuple(cfg.std), cfg.interpolation), name
    arch = name.removeprefix("timm:").split(".")[0]
    assert weights.model == arch
    assert weights.default == (timm.models.get_pretrained_cfg(arch).tag == cfg.tag), name
  # Every plain-layout ImageNet-1k tag of the registry's torchvision architectures is there.
  for arch in {w.model for w in tables.values()}:
    for tag in timm.list_pretrained(f"{arch}.*"):
      if timm.models.get_pretrained_cfg(tag).num_classes == 1000:
        assert f"timm:{tag}" in tables


@pytest.mark.slow  # builds four torch networks
def test_timm_and_torchvision_networks_have_the_same_state_dict_layout():
  # So the one converter reads both sources' files.
  tv, timm = references.torchvision(), references.timm()
  for arch in ("resnet50", "resnext50_32x4d"):
    ours = {k: tuple(v.shape) for k, v in tv.models.get_model(arch).state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in timm.create_model(arch).state_dict().items()}
    assert ours == theirs


def test_the_imagenet_class_names_are_torchvision_s_in_the_heads_order():
  tv = references.torchvision()
  classes = inference.imagenet_classes()
  assert [name for _, name in classes] == tv.models.ResNet50_Weights.IMAGENET1K_V2.meta[
      "categories"]
  synsets = [s for s, _ in classes]
  assert synsets == sorted(synsets) and len(set(synsets)) == 1000  # the heads' (sorted) order
  assert classes[281] == ("n02123045", "tabby")


def test_predict_takes_weights_by_name(server, published, tmp_path, monkeypatch, capsys):
  from PIL import Image

  from resnet_jax.commands import predict
  _, file, digest = published
  entry(server, "predict", file, digest)
  monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
  Image.fromarray(np.full((12, 12, 3), 200, np.uint8)).save(tmp_path / "grey.png")
  before = len(server.gets)
  for _ in range(2):
    assert predict.main(["--checkpoint=test:resnet8.predict", "--top=2",
                         str(tmp_path / "grey.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("grey.png") and len(lines) == 3
  assert len(server.gets) == before + 1  # downloaded once; the second run read the cache


@pytest.mark.slow
def test_fine_tuning_takes_weights_by_name(server, published, small_config, tmp_path,
                                           monkeypatch):
  from resnet_jax.train import loop
  _, file, digest = published
  entry(server, "finetune", file, digest)
  monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
  config = small_config(num_steps=2, model={"name": ""},
                        init={"checkpoint": "test:resnet8.finetune"})
  loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert os.path.exists(tmp_path / "cache" / "converted" / "test" / "resnet8.finetune")


@pytest.mark.slow
def test_a_stop_during_a_download_leaves_no_file(server, published, tmp_path):
  # The command (predict, with the entry registered first) is stopped mid-download by SIGINT.
  _, file, digest = published
  url = f"http://127.0.0.1:{server.server_address[1]}/slow/{file}"
  script = (
      "import sys\n"
      "from resnet_jax import hub\n"
      f"hub.register_weights(hub.Weights(name='test:resnet8.slow', model='resnet8', url={url!r}, "
      f"sha256={digest!r}, num_classes=10, image_size=8, crop_ratio=1.0))\n"
      "from resnet_jax.commands import predict\n"
      "sys.exit(predict.main(['--checkpoint=test:resnet8.slow', 'x.png']))\n")
  server.stalled.clear()
  child = subprocess.Popen([sys.executable, "-c", script], cwd=os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), env={**os.environ, cache.CACHE_ENV: str(tmp_path)},
      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  assert server.stalled.wait(120)
  time.sleep(0.5)
  assert [f for f in files_under(tmp_path) if ".tmp-" in f]  # the download was under way
  child.send_signal(signal.SIGINT)
  child.wait(60)
  assert child.returncode != 0
  assert files_under(tmp_path) == []
