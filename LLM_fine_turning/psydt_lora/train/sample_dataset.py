"""The training set as the Trainer reads it: one sample a row, or with --packing several a row."""
from psydt_lora.data.packing import fill_rows, merge_features, resolve_pack_length
from psydt_lora.data.samples import SampleSettings


def pack_capacity(settings: SampleSettings) -> int:
    """Tokens a --packing row may hold: --pack_length (by default 1.5 x --max_length, a tree's limit too)."""
    return resolve_pack_length(settings.pack_length, settings.max_length)


def datasets_for(packing: bool, capacity: int, train_samples, eval_samples):
    """(train set, eval set or None). --packing merges the training samples into rows; evaluation keeps one
    sample a row, so its loss (the Trainer averages per batch) stays comparable between runs."""
    train_set = SampleDataset(train_samples, packing, capacity)
    return train_set, (SampleDataset(eval_samples) if eval_samples else None)


class SampleDataset:
    """Samples (a `SampleSource`) as the Trainer wants them (dicts of token id lists): one a row, or with
    `--packing` several a row (`packing.fill_rows` up to the pack length), each isolated from the others."""

    def __init__(self, samples, packing: bool = False, capacity: int = 0):
        self.samples = samples
        self.rows = fill_rows(samples.lengths(), capacity) if packing and len(samples) else None

    def __len__(self):
        return len(self.rows) if self.rows is not None else len(self.samples)

    def __getitem__(self, i):
        if self.rows is None:
            return self.samples[i].features()
        return merge_features([self.samples[j].features() for j in self.rows[i]])

