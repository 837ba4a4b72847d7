"""A PyTorch DataLoader given a polyproc context, without whole-program mode."""
import sys

import torch
from torch.utils.data import DataLoader, Dataset

import polyproc


class Squares(Dataset):
    def __len__(self): return 16
    def __getitem__(self, i): return torch.tensor([i * i], dtype=torch.float32)


if __name__ == "__main__":
    method = sys.argv[1]
    ctx = polyproc.get_context(method)
    dl = DataLoader(Squares(), batch_size=4, num_workers=2, multiprocessing_context=ctx)
    print(method, [b.flatten().tolist() for b in dl], type(ctx).__module__.split(".")[0])
