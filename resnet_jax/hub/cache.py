"""The weights cache: each published file downloaded once and verified by its digest, and its
converted variables kept beside it.

Layout under the cache folder ($RESNET_JAX_CACHE, default ~/.cache/resnet_jax):
  downloads/SOURCE/MODEL.TAG/FILE    the published file, as downloaded (placed by hand offline)
  converted/SOURCE/MODEL.TAG/        its variables as `pretrained.export` writes them

A download goes to a temporary file beside its destination and is renamed only once its SHA-256
matches: a stop, a full disk, a dropped connection or a wrong digest leaves no file behind, and
two processes downloading at once each rename a complete file. The converted folder is written
the same way (a temporary folder renamed whole), and its checksums are verified on every load.
"""

import hashlib
import http.client
import logging
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request

from resnet_jax import files, pretrained
from resnet_jax.data.transforms import Preprocessing
from resnet_jax.errors import InputNotFoundError, InvalidInputError, StorageError
from resnet_jax.hub import Weights
from resnet_jax.interop import convert

CACHE_ENV = "RESNET_JAX_CACHE"
DEFAULT_CACHE = "~/.cache/resnet_jax"
TIMEOUT_S = 60
CHUNK = 1 << 20
DIGEST_HEADER = "X-Linked-Etag"  # Hugging Face: a large (LFS) file's SHA-256, on its redirect


def cache_root(cache_dir: str | None = None) -> str:
  """The cache folder: `cache_dir`, else $RESNET_JAX_CACHE, else ~/.cache/resnet_jax."""
  return os.path.abspath(os.path.expanduser(cache_dir or os.environ.get(CACHE_ENV)
                                            or DEFAULT_CACHE))


def _entry_dir(weights: Weights) -> str:
  origin, tag = weights.name.split(":", 1)
  return os.path.join(origin, tag)


def download_path(weights: Weights, root: str) -> str:
  """Where the published file of `weights` is kept (or is to be placed by hand)."""
  filename = os.path.basename(urllib.parse.urlparse(weights.url).path)
  return os.path.join(root, "downloads", _entry_dir(weights), filename)


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(CHUNK), b""):
      digest.update(block)
  return digest.hexdigest()


class _DigestOnRedirect(urllib.request.HTTPRedirectHandler):
  """Keeps the digest a server sends with a redirect (Hugging Face sends a file's SHA-256 with
  the redirect to its storage, which urllib would otherwise drop)."""

  def __init__(self):
    self.digest = None

  def redirect_request(self, req, fp, code, msg, headers, newurl):
    self.digest = self.digest or headers.get(DIGEST_HEADER)
    return super().redirect_request(req, fp, code, msg, headers, newurl)


def _published_digest(weights: Weights, server_digest: str | None) -> str | None:
  if weights.sha256:
    return weights.sha256.lower()
  return server_digest.strip('"').lower() if server_digest else None


def _download(weights: Weights, path: str) -> None:
  """Downloads the file of `weights` to `path`, verified, or leaves nothing there (the file is
  written atomically, and an error inside the block removes it)."""
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
  except OSError as e:
    raise StorageError(f"Cannot write the weights cache {os.path.dirname(path)}: {e.strerror}; "
                       f"set {CACHE_ENV} to a writable folder.") from e
  redirects, digest = _DigestOnRedirect(), hashlib.sha256()
  with files.atomic_writer(path, "wb") as f:
    try:
      with urllib.request.build_opener(redirects).open(weights.url, timeout=TIMEOUT_S) as response:
        server_digest = redirects.digest or response.headers.get(DIGEST_HEADER)
        size, received = response.headers.get("Content-Length"), 0
        for block in iter(lambda: response.read(CHUNK), b""):
          digest.update(block)
          f.write(block)
          received += len(block)
        if size is not None and received != int(size):
          raise ConnectionError(f"the connection closed after {received} of {size} bytes")
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError,
            ConnectionError) as e:  # unreachable, refused, cut short
      reason = getattr(e, "reason", None) or e
      raise InputNotFoundError(
          f"Cannot download {weights.name} from {weights.url} ({reason}); without a network, "
          f"download {weights.url} elsewhere and place it at {path}, then run the same command "
          "again.") from e
    expected = _published_digest(weights, server_digest)
    if expected is None:
      raise InvalidInputError(f"{weights.url} came without a published SHA-256, so it cannot be "
                              f"verified; check the file yourself and place it at {path}.")
    if not digest.hexdigest().startswith(expected):
      raise InvalidInputError(f"The download of {weights.name} has SHA-256 "
                              f"{digest.hexdigest()[:16]}..., not the published {expected[:16]}...; "
                              f"it was deleted. Download it again (from {weights.url}).")


def fetch(weights: Weights, root: str) -> str:
  """The path of the verified file of `weights` in the cache, downloading it first if needed.

  Raises:
    InputNotFoundError: it cannot be downloaded (offline): the message names where to place it.
    InvalidInputError: its digest is not the published one (the download is deleted; a file
      placed by hand is named, and left alone).
  """
  path = download_path(weights, root)
  if not os.path.exists(path):
    logging.info("Downloading %s from %s", weights.name, weights.url)
    _download(weights, path)
  elif weights.sha256 and not _sha256(path).startswith(weights.sha256.lower()):
    raise InvalidInputError(f"{path} is not the published {weights.name} (its SHA-256 differs "
                            f"from {weights.sha256}); delete it, or replace it with {weights.url}.")
  return path


def _converted(weights: Weights, path: str) -> pretrained.Pretrained:
  """The file's variables, with the entry's preprocessing and the ImageNet names."""
  model = convert.converted_model(weights.model, path, image_size=weights.image_size,
                                  crop_ratio=weights.crop_ratio,
                                  labels="auto" if weights.num_classes == 1000 else "none")
  if model.num_classes != weights.num_classes:
    raise InvalidInputError(f"{path} has a {model.num_classes}-class head, but {weights.name} is "
                            f"registered with {weights.num_classes}; fix its entry.")
  channels = model.preprocessing.channels
  scale = lambda values: tuple(float(v) * 255 for v in values)[:channels]
  model.preprocessing = Preprocessing(weights.image_size, channels, weights.crop_ratio,
                                      scale(weights.mean), scale(weights.std))
  return model


def load(weights: Weights, cache_dir: str | None = None) -> pretrained.Pretrained:
  """The variables of `weights`: from the converted cache, else downloaded (once) and converted
  (once). A damaged converted folder is converted again from the verified download."""
  root = cache_root(cache_dir)
  done = os.path.join(root, "converted", _entry_dir(weights))
  if os.path.exists(os.path.join(done, pretrained.MODEL_FILE)):
    try:
      return pretrained.load(done)
    except InvalidInputError as e:
      logging.warning("The converted %s in %s is damaged (%s); converting it again.",
                      weights.name, done, e)
      shutil.rmtree(done, ignore_errors=True)
  model = _converted(weights, fetch(weights, root))
  try:
    with files.atomic_folder(done) as temp:
      pretrained.export(temp, model)
  except OSError:  # another process converted it first: its folder is as good
    if not os.path.exists(os.path.join(done, pretrained.MODEL_FILE)):
      raise
  return model
