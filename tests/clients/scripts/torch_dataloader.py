import multiprocessing
import sys

import torch
from torch.utils.data import DataLoader, Dataset


class Squares(Dataset):
    def __len__(self): return 16
    def __getitem__(self, i): return torch.tensor([i * i], dtype=torch.float32)

if __name__ == "__main__":
    method = sys.argv[1]
    dl = DataLoader(Squares(), batch_size=4, num_workers=2,
                    multiprocessing_context=multiprocessing.get_context(method))
    print(method, [b.flatten().tolist() for b in dl], type(multiprocessing.get_context(method)).__module__.split(".")[0])
