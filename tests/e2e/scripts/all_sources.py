"""Print one value from every source of nondeterminism detrun covers; nothing is seeded."""
import os
import random
import secrets
import time
import uuid

import numpy as np
import torch

values = {}
random.seed(time.time())
values["random.seed(time)"] = random.random()
values["Random()"] = random.Random().random()
values["global random"] = random.getrandbits(32)
values["SystemRandom"] = random.SystemRandom().random()
values["secrets"] = secrets.token_hex(8)
values["uuid4"] = str(uuid.uuid4())
values["urandom"] = os.urandom(4).hex()
values["getrandom"] = os.getrandom(4).hex()
values["set order"] = "".join(sorted({"a", "b", "c", "d"}, key=lambda s: 0) + list({"x", "y", "z", "w"}))
values["hash"] = hash("detrun")
np.random.seed(int(time.time() * 1e6) % 2**32)
values["np.random.seed(time)"] = float(np.random.rand())
values["RandomState()"] = float(np.random.RandomState().rand())
values["default_rng()"] = float(np.random.default_rng().random())
values["SeedSequence()"] = int(np.random.SeedSequence().generate_state(1)[0])
values["torch.seed()"] = torch.seed()
values["torch.rand"] = float(torch.rand(()))
torch.manual_seed(time.time_ns() % 2**63)
values["torch.manual_seed(time)"] = float(torch.rand(()))
g = torch.Generator()
values["Generator().seed()"] = g.seed()
values["isinstance"] = isinstance(torch.default_generator, torch.Generator)
torch.cuda.seed()
for key, value in values.items():
    print(f"{key}: {value}")
