"""The reference recipe for real data (insightface ``train.py --network vargfacenet --loss
arcface``): exactly ``train/configs/base.py`` - ArcFace s=64 m=0.5, SGD momentum 0.9, wd 5e-4,
batch 128 per device, x0.1 at 100k/160k/220k steps - with lr 0.01, the start users found stable
(insightface #980, #1295). Add warm-up with ``--set schedule.warmup_steps=...``."""

CONFIG = {}
