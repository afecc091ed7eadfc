import os, shutil, logging
os.environ["M3RCR_CACHE"] = "/work/review-train/cache"
from m3rcr_xr import weights
from m3rcr_xr.weights.download import file_sha256, cached_file
from m3rcr_xr.exceptions import CheckpointError
url = "http://127.0.0.1:8765/w.pth"
p = weights.fetch(url); h = file_sha256(p); print("1st", p, h[:12], sorted(os.listdir("/work/review-train/cache")))
# tamper the cached file
with open(p, "r+b") as f: f.seek(-10, 2); f.write(b"XXXXXXXXXX")
p2 = weights.fetch(url); print("after tamper, refetched ok:", file_sha256(p2) == h)
# symlink the cache entry to another file
os.remove(p); os.symlink("/work/review-train/cli/x.pth", p)
p3 = weights.fetch(url); print("after symlink:", os.path.islink(p3), file_sha256(p3) == h)
# fragment with wrong hash
try:
    weights.fetch(url + "#sha256=" + "0"*64); print("wrong fragment accepted!")
except CheckpointError as e: print("wrong fragment refused:", str(e)[:100])
# resolve with wrong fragment
try:
    r = weights.resolve(None, url + "#sha256=" + "0"*64); print("resolve wrong fragment accepted!", r)
except CheckpointError as e: print("resolve refused:", str(e)[:80])
r = weights.resolve(None, url + "#sha256=" + h); print("resolve ok", r.model, r.sha256 == h, r.sources)
