"""The DALI backend: one pipeline that reads like the transform list (see `transform.py`).

Encoded JPEG bytes enter through `fn.external_source`, read at the .idx offsets in the order of
`order.SamplePlan`, rather than through `fn.readers.webdataset`, because the reader (a) shuffles only
inside a buffer and by tar order, not globally per epoch, (b) cannot give exact equal-per-rank batch
counts together with whole-split evaluation, and (c) cannot put each sample's ORIGINAL size (in its
.json member) into the graph, which the --max-side crop scaling needs. `read_with_webdataset_reader`
runs DALI's own reader over the same shards and index files (used by `vaedist.data.verify.verify_split`).

Decoding runs on the GPU (`mixed`: nvJPEG / the hardware JPEG engines) when training on CUDA, on CPU
threads otherwise (`device_id=None`: no GPU needed). Each sample's crop window is computed on the host
(numpy, from the sizes `index` read once from the JPEG headers): per-sample scalar operators in the graph
cost more than decoding a small JPEG. On CPU, DALI decodes only the window's part inside the image and
torch pads and resizes it (`finish_windows`); on the GPU, DALI does all of it.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali.plugin.pytorch import feed_ndarray

from vaedist.data.bad_samples import BadSamples
from vaedist.data.index import SplitIndex, open_tars
from vaedist.data.reference import pillow_problem
from vaedist.data.transform import TransformSpec, centre_crop_window
from vaedist.jpeg import marker_chain_problem


@pipeline_def
def seed_transform_pipeline(source, spec: TransformSpec, decoder_device: str):
    """Outputs the images, int32 [N, 4] zero padding and int64 [N] sample indices. On `mixed`: uint8
    [N, 3, size, size] images (padding is all zeros). On `cpu`: the part of each crop window inside the image,
    uint8 [h, w, 3], and its zero padding (left, right, top, bottom); `finish_windows` pads and resizes
    them in torch (see there why). `source` gives the region to decode per sample (see `_EpochSource`)."""
    jpegs, anchor, shape, padding, index = fn.external_source(
        source=source, num_outputs=5, batch=True, cycle="raise",
        dtype=[types.UINT8, types.FLOAT, types.FLOAT, types.INT32, types.INT64], ndim=[1, 1, 1, 1, 0],
    )
    decode_options = dict(
        device=decoder_device, output_type=types.RGB,  # grey/CMYK -> RGB, HWC
        adjust_orientation=False,  # the sharder wrote upright pixels; Pillow ignores EXIF too
        jpeg_fancy_upsampling=True,  # GPU chroma upsampling like libjpeg-turbo's (CPU, Pillow)
    )
    if decoder_device == "cpu":  # libjpeg-turbo skips the rows and columns outside the region
        # No fn.slice to pad here: it costs as much as decoding a --max-side 160 JPEG, and is a plain copy
        # for every window that lies inside its image (all of them on COCO-like images at crop 375).
        inside = fn.decoders.image_slice(jpegs, anchor, shape, axis_names="WH", normalized_anchor=False,
                                         normalized_shape=False, **decode_options)
        return inside, padding, index
    # whole images, so that the GPU's hardware JPEG engines take them; the window may stick out of the
    # image: that part is zero padding, like the seed's CenterCrop
    images = fn.decoders.image(jpegs, hw_decoder_load=0.9, **decode_options)
    images = fn.slice(images, anchor, shape, axis_names="WH", normalized_anchor=False,
                      normalized_shape=False, out_of_bounds_policy="pad", fill_values=0)
    images = fn.resize(images, size=[spec.size, spec.size], interp_type=types.INTERP_LINEAR, antialias=True)
    images = fn.transpose(images, perm=[2, 0, 1])  # HWC -> CHW
    return images, padding, index


class BrokenJpegs(Exception):
    """Raised by the source (DALI hands it to `pipe.run()` as is) for a batch holding JPEGs whose marker chain
    is broken: sample index -> what is wrong."""

    def __init__(self, problems: dict[int, str]):
        super().__init__(f"{len(problems)} JPEGs with a broken marker chain")
        self.problems = problems


class _EpochSource:
    """An iterable that DALI re-iterates after each `reset()`: it serves whatever batches are queued, as
    (JPEG bytes, region anchor float32 [N, 2] and shape [N, 2] in (x, y) stored pixels, padding int32 [N, 4],
    indices). The region is the crop window (`mixed`: decoded whole, then sliced with zero padding) or, with
    `inside_only` (`cpu`), the window's part inside the image plus the padding that completes it."""

    def __init__(self, index: SplitIndex, crop: int, inside_only: bool):
        self.index, self.crop, self.inside_only = index, crop, inside_only
        self.reader = open_tars(index.shard_dir, index.shards)
        self.batches: Iterable[np.ndarray] = ()

    def jpegs(self, batch: np.ndarray, check: bool = False) -> list[np.ndarray]:
        """The batch's JPEG bytes; `check`: BrokenJpegs if a marker chain is broken (see vaedist.jpeg: DALI's
        CPU decoder can crash on such a file in a batch), before DALI sees any of them."""
        ix = self.index
        members = self.reader.read_many([(ix.shard[i], ix.offset[i], ix.size[i]) for i in batch])
        if check:
            problems = {int(i): problem for i, data in zip(batch, members)
                        if (problem := marker_chain_problem(data)) is not None}
            if problems:
                raise BrokenJpegs(problems)
        return [np.frombuffer(data, dtype=np.uint8) for data in members]

    def __iter__(self):
        ix = self.index
        for batch in self.batches:
            # One call per batch: behind a URL, the batch's range requests go out together.
            jpegs = self.jpegs(batch, check=True)
            # the same numpy formula as the reference backend's, on the whole batch at once
            width, height = ix.stored_width[batch], ix.stored_height[batch]
            x0, y0, w, h = centre_crop_window(width, height, ix.orig_width[batch], ix.orig_height[batch], self.crop)
            if self.inside_only:
                inside_x0, inside_y0 = np.maximum(x0, 0), np.maximum(y0, 0)
                inside_w = np.minimum(x0 + w, width) - inside_x0
                inside_h = np.minimum(y0 + h, height) - inside_y0
                left, top = inside_x0 - x0, inside_y0 - y0
                anchor, shape = np.stack([inside_x0, inside_y0], 1), np.stack([inside_w, inside_h], 1)
                padding = np.stack([left, w - inside_w - left, top, h - inside_h - top], 1)
            else:
                anchor, shape, padding = np.stack([x0, y0], 1), np.stack([w, h], 1), np.zeros((len(batch), 4))
            yield (jpegs, anchor.astype(np.float32), shape.astype(np.float32), padding.astype(np.int32),
                   batch.astype(np.int64))


class DaliDecoder:
    """Turns batches of sample indices into uint8 [N, 3, size, size] on `device`.

    When the pipeline fails (DALI names no sample: "nvImageCodec failure", and the pipeline is dead), the
    samples of the batch it failed on are decoded one by one on the host (`undecodable`), the bad ones go to
    `bad` (policy), the pipeline is rebuilt, and decoding goes on from that batch, fixed by `bad`'s rule.
    A JPEG whose marker chain is broken never reaches DALI: the source checks each batch's bytes as it reads
    them (microseconds per JPEG) and the batch goes the same way, its culprits named by the check.
    Nothing of this runs while every sample decodes: the fast path is the plain pipeline.
    """

    def __init__(self, index: SplitIndex, spec: TransformSpec, batch_size: int, device: torch.device,
                 workers: int, prefetch: int, seed: int, bad: BadSamples):
        self.device = device
        self._size = spec.size
        self._bad = bad
        cuda = device.type == "cuda"
        self._source = _EpochSource(index, spec.crop, inside_only=not cuda)
        self._args = dict(
            source=self._source, spec=spec, decoder_device="mixed" if cuda else "cpu",
            batch_size=batch_size, num_threads=max(1, workers), prefetch_queue_depth=max(1, prefetch),
            device_id=(device.index if device.index is not None else torch.cuda.current_device()) if cuda else None,
            seed=seed,
        )
        self._pipe = None

    def _pipeline(self):
        if self._pipe is None:
            self._pipe = seed_transform_pipeline(**self._args)
            self._pipe.build()
        return self._pipe

    def decode(self, batches: list[np.ndarray], keep_size: bool = True) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """(indices, uint8 images) per (non-empty) index batch, in order; `indices` differ from the batch's
        where a sample failed to decode (replaced, or dropped when not `keep_size`)."""
        queue, done = list(batches), 0  # batches to yield, and how many of them are yielded
        while True:
            pipe = self._pipeline()
            self._source.batches = [b for b in queue[done:] if len(b)]
            finished, failure = False, None
            try:
                while True:
                    while done < len(queue) and not len(queue[done]):  # emptied by dropping its bad samples
                        yield queue[done], self._empty()
                        done += 1
                    try:
                        outputs = pipe.run()
                    except StopIteration:
                        finished = True
                        return
                    except (RuntimeError, BrokenJpegs) as err:
                        failure = err
                        break
                    if self._args["decoder_device"] == "cpu":
                        images = finish_windows(outputs[0], outputs[1], self._size)
                    else:
                        images = _to_torch(outputs[0], self.device)
                    done += 1
                    yield queue[done - 1], images
            finally:
                if finished:
                    pipe.reset()
                else:  # left mid-epoch, or failed: prefetched batches would leak into the next epoch, start afresh
                    self._pipe = None
                    del pipe
            if isinstance(failure, BrokenJpegs):  # found before DALI decoded any of them: no search needed
                for i, problem in failure.problems.items():
                    self._bad.add(i, "jpg", problem)
                queue = queue[:done] + [self._bad.fix(b, keep_size) for b in queue[done:]]
            else:
                queue = self._recover(queue, done, failure, keep_size)

    def _recover(self, queue: list[np.ndarray], failed: int, err: RuntimeError, keep_size: bool) -> list[np.ndarray]:
        """Find the bad samples of the batch the pipeline failed on, hand them to the policy, and return the
        queue with the batches from there on fixed. DALI reports failures in batch order; should the failed
        batch decode sample by sample after all, the batches prefetched after it are searched too."""
        for batch in queue[failed : failed + 1 + self._args["prefetch_queue_depth"]]:
            jpegs = self._source.jpegs(batch)
            culprits = undecodable(jpegs, self._args["decoder_device"], self._args["device_id"])
            if culprits:
                break
        else:
            raise err  # no sample is to blame (out of memory, a driver error...): not a bad-sample case
        for position, reason in culprits.items():
            pillow = pillow_problem(bytes(jpegs[position]))
            self._bad.add(int(batch[position]), "jpg", f"fails to decode (DALI: {reason}; Pillow: {pillow or 'decodes it'})")
        return queue[:failed] + [self._bad.fix(b, keep_size) for b in queue[failed:]]

    def _empty(self) -> torch.Tensor:
        return torch.empty((0, 3, self._size, self._size), dtype=torch.uint8, device=self.device)


@pipeline_def
def _one_by_one_pipeline(decoder_device: str):
    jpegs = fn.external_source(name="jpegs", dtype=types.UINT8, ndim=1)
    return fn.decoders.image(jpegs, device=decoder_device, output_type=types.RGB, adjust_orientation=False)


def dali_reason(err: BaseException) -> str:
    """DALI's own words for a failure, without its pipeline boilerplate: "nvImageCodec failure: '#3'"."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if "encountered:" in lines:
        lines = lines[lines.index("encountered:") + 1 :]
    lines = [line for line in lines if "pipeline" not in line.lower() and not line.startswith("File ")]
    # "Failed to decode sample #0 :": the position is the probe's, meaningless to the user
    lines = [re.sub(r"\s*sample #\d+\s*:?\s*$", "", re.sub(r"sample #\d+\s*:\s*", "", line)) for line in lines]
    return "; ".join(lines)[:200] or type(err).__name__


def undecodable(jpegs: list[np.ndarray], decoder_device: str = "cpu", device_id: int | None = None) -> dict[int, str]:
    """Positions of the JPEGs that DALI's decoder rejects when each is decoded alone, with DALI's reason."""
    found: dict[int, str] = {}
    pipe = None
    for position, data in enumerate(jpegs):
        if pipe is None:
            pipe = _one_by_one_pipeline(decoder_device=decoder_device, batch_size=1, num_threads=1,
                                        device_id=device_id, prefetch_queue_depth=1)
            pipe.build()
        pipe.feed_input("jpegs", [data])
        try:
            pipe.run()
        except RuntimeError as err:
            found[position] = dali_reason(err)
            pipe = None  # a failed pipeline is no longer valid
    return found


@pipeline_def
def _batch_decode_pipeline():
    jpegs = fn.external_source(name="jpegs", dtype=types.UINT8, ndim=1)
    return fn.decoders.image(jpegs, device="cpu", output_type=types.RGB, adjust_orientation=False)


def decode_problems(jpegs: list[np.ndarray], num_threads: int, batch_size: int = 64) -> dict[int, str]:
    """Every JPEG decoded by DALI on the CPU, `batch_size` at a time; a batch that fails is decoded again one
    by one (`undecodable`). Positions of the rejected ones, with DALI's reason (`vaedist.data.verify`)."""
    found: dict[int, str] = {}
    pipe = None
    for start in range(0, len(jpegs), batch_size):
        chunk = jpegs[start : start + batch_size]
        if pipe is None:
            pipe = _batch_decode_pipeline(batch_size=batch_size, num_threads=num_threads, device_id=None,
                                          prefetch_queue_depth=1)
            pipe.build()
        pipe.feed_input("jpegs", chunk)
        try:
            pipe.run()
        except RuntimeError:
            pipe = None
            found.update({start + position: reason for position, reason in undecodable(chunk).items()})
    return found


def finish_windows(inside, padding, size: int) -> torch.Tensor:
    """DALI batches of uint8 [h, w, 3] decoded regions and int32 [4] zero padding (left, right, top, bottom)
    -> uint8 [N, 3, size, size] (channels-last strides): each crop window, zero-padded, resized antialiased
    bilinear.

    On CPU, torch's uint8 antialiased resize (AVX2, channels-last) takes ~0.1 ms for a 375x375 window
    against ~0.45 ms for DALI's `fn.resize` or Pillow's (measured, one thread): a third of DALI's whole
    per-image CPU time. It follows Pillow's BILINEAR filter, the reference backend's.
    """
    pads = np.asarray(padding.as_tensor())  # [N, 4]
    same_padding = bool((pads == pads[0]).all())
    if inside.is_dense_tensor() and same_padding:  # e.g. 640x480 images at crop 375, full size or --max-side
        # A view of DALI's buffer, read before the next `run()` reuses it: [N, h, w, 3] -> channels-last NCHW
        groups = [(torch.from_numpy(np.asarray(inside.as_tensor())).permute(0, 3, 1, 2), pads[0])]
    else:  # sizes differ (images narrower than the crop are padded; --max-side rounding): one call per image
        groups = [(torch.from_numpy(inside.at(i)).permute(2, 0, 1)[None], pads[i]) for i in range(len(inside))]
    resized = []
    for region, pad in groups:  # region: uint8 [n, 3, h, w]
        window = torch.nn.functional.pad(region, tuple(int(p) for p in pad)) if pad.any() else region
        resized.append(torch.nn.functional.interpolate(window, size=(size, size), mode="bilinear",
                                                       antialias=True, align_corners=False))
    # channels-last, as torch's resize returns it: `flip_and_normalise` makes the float copy contiguous
    # (converting the uint8 here would cost more than the resize), and the cache copies rows of any layout.
    return torch.cat(resized)


def _to_torch(batch, device: torch.device) -> torch.Tensor:
    """Copy a DALI batch out (DALI reuses its buffers) into a torch tensor on `device`."""
    if device.type == "cuda":
        tensor = batch.as_tensor()
        out = torch.empty(tensor.shape(), dtype=torch.uint8, device=device)
        feed_ndarray(tensor, out, cuda_stream=torch.cuda.current_stream(device))
        return out
    return torch.from_numpy(np.array(batch.as_tensor()))


def read_with_webdataset_reader(paths: list[Path], index_paths: list[Path], exts: list[str],
                                missing_component_behavior: str = "error", batch_size: int = 64) -> int:
    """Read every sample through DALI's own `fn.readers.webdataset` with our index files. With "error" a
    sample that lacks one of `exts` raises; "skip" drops it. Returns the number of samples in the epoch."""

    @pipeline_def(batch_size=batch_size, num_threads=1, device_id=None)
    def reader_pipeline():
        return tuple(fn.readers.webdataset(
            paths=[str(p) for p in paths], index_paths=[str(p) for p in index_paths], ext=exts,
            missing_component_behavior=missing_component_behavior, name="reader", pad_last_batch=False,
        ))

    pipe = reader_pipeline()
    pipe.build()
    total = pipe.reader_meta("reader")["epoch_size"]
    read = 0
    while read < total:
        outputs = pipe.run()
        read += len(outputs[0])
    return total
