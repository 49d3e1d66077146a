#!/bin/bash
# Reproduces every row of docs/embedded-default.md (run from the repository root with the venv
# active; one job at a time; several hours on a 2-core CPU). Results go to work/exp13/results.
mkdir -p work/exp13/results
set -e
# data: training sets (the held-out eval split is the generator's 'test' split, the same images in all)
python experiments/embedded_default/make_data.py d60x25 60 25
python experiments/embedded_default/make_data.py d1000x4 1000 4
python experiments/embedded_default/make_data.py d2000x4 2000 4
python experiments/embedded_default/make_data.py d200x20 200 20
python -c "from vargfacenet.data.synthetic import ensure_dataset; ensure_dataset('work/data/eval300x5', 'tiny', 0, train_ids=8, train_images=4, pack_ids=10, pack_images=2, pack_pairs=20, test_ids=300, test_images=5, distractors=0)"
# R1-R4 difficulty reference
python experiments/embedded_default/baselines.py work/data/d60x25 work/data/d1000x4 work/data/d2000x4
# R5 VarGFaceNet, embedded recipe (ArcFace s=32 m=0.2, lr 0.05), 1000 ids x 4
python experiments/embedded_default/exp.py v_d1000_b32_s150 --data work/data/d1000x4 --set train.batch_size=32 --set schedule.max_steps=150 --set log.checkpoint_every=1000
# R6/R7 MobileFaceNet-512, normalised softmax s=32, lr 0.1, warm-up 10: 1000x4 vs 200x20
for d in d1000x4 d200x20; do
python experiments/embedded_default/exp.py m_${d%%x*}_norm_s32_lr1 --data work/data/$d --set network.name=mobilefacenet --set "network.kwargs={'emb_size':512}" --set train.batch_size=32 --set schedule.max_steps=150 --set log.checkpoint_every=1000 --set loss.m2=0.0 --set optimizer.lr=0.1 --set schedule.warmup_steps=10
done
# R8-R11 the main job with the recommended presets (teacher, scratch, gen1, gen2)
D=work/data/d200x20
python train/train_kd.py --recursive 2 --preset experiments/embedded_default/presets/student.py --teacher-preset experiments/embedded_default/presets/teacher_mfn.py --data $D/train --val $D/synth_lfw.bin --test $D/test --run-dir work/runs/kdA
# R12 generation 1 with the angular form (Eq. 4), same teacher, budget, data
python experiments/embedded_default/exp.py gen1_angular --data $D --preset experiments/embedded_default/presets/student.py --set kd.form=angular --teacher work/runs/kdA/teacher,2
# the table's accuracies: all-pairs on 300 held-out ids x 5 images, no flip, identity bootstrap
R=work/runs/kdA
python experiments/embedded_default/eval_models.py work/data/eval300x5/test work/exp13/results/kdA_eval300_all.json --noflip teacher=$R/teacher,2 scratch=$R/model-scratch,2 gen1=$R/model-gen1,2 gen2=$R/model-gen2,2 gen1_angular=work/exp/gen1_angular/model,2 --ref scratch
python experiments/embedded_default/eval_models.py work/data/eval300x5/test work/exp13/results/kdA_eval300_gen.json --noflip gen1=$R/model-gen1,2 gen2=$R/model-gen2,2 gen1_angular=work/exp/gen1_angular/model,2 --ref gen1
# (R9 at step 250: teacher-0001 copied to work/snap/t250 while the run was going)
