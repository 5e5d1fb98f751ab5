"""Time of one training sample's crops with and without stored class indices (``ClassIndicesd``).

    python -m benchmarks.crop_sampling

One phantom at 160x160x128 (2.4 x 2.4 x 2.5 mm), two class-balanced 96^3 crops plus the default
augmentation, one torch thread, mean of 10 samples.
"""
import time, torch, numpy as np
torch.set_num_threads(1)
from mosmoskit.data.phantom import make_case
from mosmoskit.data.augment import segmentation_train_transforms, ClassIndicesd
c = make_case(seed=1, index=0, shape=(160, 160, 128), spacing=(2.4, 2.4, 2.5))
sample = {"image": torch.as_tensor(np.asarray(c.image, dtype=np.float32))[None], "label": torch.as_tensor(np.asarray(c.label))[None]}
for key in (None, "idx"):
    chain = segmentation_train_transforms((96, 96, 96), "btcv", num_samples=2, class_balanced=True, label_indices_key=key)
    chain.set_random_state(0)
    s = ClassIndicesd("label", 14, output_key="idx")(sample) if key else sample
    t = time.perf_counter(); n = 10
    for _ in range(n): chain(dict(s))
    print("indices stored" if key else "mask scanned", f"{(time.perf_counter() - t) / n * 1000:.0f} ms per sample (2 crops of 96^3, augmentation included)")
t = time.perf_counter(); ClassIndicesd("label", 14)(sample); print(f"ClassIndicesd once: {(time.perf_counter()-t)*1000:.0f} ms")
