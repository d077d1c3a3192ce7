"""What loading a source and cutting two batches of crops costs in memory (for the memory-bound tests)."""

import pickle
import tracemalloc

from softcontrast.data import CropSpec, TrainingBatches, load_source


def load_and_crop(source: str) -> tuple[int, int]:
    """Peak traced bytes while loading ``source`` and cutting two batches, and the training split's pickled size."""
    tracemalloc.start()
    try:
        split = load_source(source).train
        batches = TrainingBatches(split, batch_size=16, num_workers=0, crops=[CropSpec(16)])
        for _, (crops, _) in zip(range(2), batches.epoch(0)):
            assert crops[0].shape == (16, 3, 16, 16)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak, len(pickle.dumps(split))
