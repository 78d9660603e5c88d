#!/usr/bin/env bash
# GPU proof run (device tool): ViT-B/32 random init — eval throughput (fp32/amp, plain and REACT), training steps
# with AMP for the REACT README recipes, and a torchrun DDP launch. Writes a summary to $OUT/gpu_check.txt.
# Needs the project's pure-Python dependencies as wheels in .whl/ (see the device README) when the machine lacks them.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
W=/tmp/gpu_work; rm -rf $W; mkdir -p $W/cards
source scripts/gpu_env.sh
log() { echo "$*" | tee -a "$OUT/gpu_check.txt"; }
log "== $(date -u) $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"
log "$(python3 -c 'import torch, open_clip, timm; print("torch", torch.__version__, "open_clip", open_clip.__version__, "timm", timm.__version__)')"
python3 - <<PY
from harness.cards import get_dataset_card
from harness.data.synthetic import write_iris, write_img2dataset_shards
card = get_dataset_card("cifar-10")
write_iris(card, "$W/data", [i % 10 for i in range(4096)], size=(320, 240))
write_img2dataset_shards("$W/shards", card.classnames, n_shards=16, samples_per_shard=512, size=(256, 192))
import yaml
base = yaml.safe_load(open("harness/cards/model_cards/vitb32_CLIP.yaml"))
for name, arch in (("vitb32_random", "ViT-B-32"), ("react_vitb32_random", "react_ViT-B-32")):
    c = {"include": "$PWD/harness/cards/model_cards/_base/openai_clip.yaml", "name": name, "architecture": arch, "method": "baseline",
         "weights": {"source": "random", "seed": 0}}
    yaml.safe_dump(c, open(f"$W/cards/{name}.yaml", "w"))
PY
for card in vitb32_random react_vitb32_random; do
  for prec in fp32 amp; do
    python3 -m harness eval --model $W/cards/$card.yaml --dataset cifar-10 --data-root $W/data --results $W/r_$prec \
      --batch-size 256 --workers 14 --precision $prec --device cuda --no-progress --no-predictions-json 2>&1 | tail -2
    python3 -c "import json; r=json.load(open('$W/r_$prec/$card/elevater/cifar-10.json')); print('EVAL $card $prec', r['n_images'], 'images', r['provenance']['images_per_second'], 'img/s on', r['provenance']['device_name'])" | tee -a "$OUT/gpu_check.txt"
  done
done
python3 - <<PY | tee -a "$OUT/gpu_check.txt"
import time, torch, open_clip
m = open_clip.create_model("ViT-B-32", device="cuda").eval()
x = torch.randn(256, 3, 224, 224, device="cuda")
w = torch.nn.functional.normalize(torch.randn(512, 10, device="cuda"), dim=0)
for prec in ("fp32", "amp"):
    ctx = torch.autocast("cuda", dtype=torch.float16) if prec == "amp" else torch.autocast("cuda", enabled=False)
    with torch.inference_mode(), ctx:
        for _ in range(3): (100 * m.encode_image(x, normalize=True).float() @ w).softmax(-1)
        torch.cuda.synchronize(); t = time.perf_counter()
        for _ in range(20): (100 * m.encode_image(x, normalize=True).float() @ w).softmax(-1)
        torch.cuda.synchronize()
    print(f"FORWARD-LIMIT ViT-B-32 {prec}: {20 * 256 / (time.perf_counter() - t):.0f} img/s (pre-decoded tensors, batch 256)")
PY
AUG="--aug-cfg use_timm=True scale=(0.08,1.0) ratio=(0.75,1.3333333) hflip=0.5 interpolation=bicubic color_jitter=0.4 auto_augment=rand-m9-mstd0.5-inc1 re_prob=0.25 re_count=1"
COMMON="--train-data $W/shards/{00000..00015}.tar --dataset-type webdataset --train-num-samples 8192 --batch-size=256 --epochs 1 --warmup 10 --wd 0.1 --workers 12 --precision amp --save-frequency 1 --log-every-n-steps 8 --model-card-dir none"
run_train() { name=$1; shift
  python3 -m training.main --logs $W/logs --name $name $COMMON "$@" $AUG > $W/$name.log 2>&1; echo "rc=$?" >> $W/$name.log
  grep -E "trainable|frozen vision|checkpointing all|rc=|Error|error" $W/$name.log | tail -4 | tee -a "$OUT/gpu_check.txt"
  tail -n 3 $W/logs/$name/metrics.jsonl 2>/dev/null | head -2 | sed "s/^/TRAIN $name /" | tee -a "$OUT/gpu_check.txt"; }
run_train gated_amp --model react_ViT-B-32-quickgelu --lr 5e-4 --grad-checkpointing --lock-image-unlock-gated --lock-text
run_train gated_amp_nockpt --model react_ViT-B-32-quickgelu --lr 5e-4 --lock-image-unlock-gated --lock-text
run_train gated_amp_alwaysckpt --model react_ViT-B-32-quickgelu --lr 5e-4 --lock-image-unlock-gated --lock-text --react-always-checkpoint-gated
run_train locked_amp --model ViT-B-32-quickgelu --lr 5e-5 --grad-checkpointing --lock-text
# DDP launch: 2 processes on the one GPU (gloo: NCCL refuses two ranks on one device)
(cd $W && torchrun --nproc_per_node 2 -m training.main --name ddp $COMMON --model react_ViT-B-32-quickgelu --lr 5e-4 \
   --lock-image-unlock-gated --lock-text --dist-backend gloo --no-set-device-rank --debug-rank-stats $AUG > $W/ddp.log 2>&1; echo "rc=$?" >> $W/ddp.log)
grep -E "rc=|Error" $W/ddp.log | tail -3 | sed "s/^/DDP /" | tee -a "$OUT/gpu_check.txt"
python3 -c "
import json; s=[json.load(open('$W/logs/ddp/rank%d_stats.json' % r)) for r in (0,1)]
k=[{x[:5] for ks in t['keys_by_epoch'].values() for x in ks} for t in s]
print('DDP world', s[0]['world_size'], 'shards rank0', sorted(k[0]), 'rank1', sorted(k[1]), 'disjoint', not (k[0]&k[1]), 'params equal', s[0]['param_checksum']==s[1]['param_checksum'], 'loss first/last', round(s[0]['losses'][0],3), round(s[0]['losses'][-1],3))
" 2>&1 | tee -a "$OUT/gpu_check.txt"
tail -n 2 $W/logs/ddp/metrics.jsonl 2>/dev/null | sed "s/^/TRAIN ddp /" | tee -a "$OUT/gpu_check.txt"
cp $W/*.log "$OUT/" 2>/dev/null; ls $OUT
