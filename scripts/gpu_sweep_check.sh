#!/usr/bin/env bash
# GPU sweep check (device tool): 50,000 generated ImageNet-like JPEGs (500x375), ViT-B/32 and ViT-L/14 with
# random weights: cold eval (decode + pixel cache written), warm eval (pixel cache), the AMP forward limit on ready
# tensors, 2 torchrun ranks on the one GPU (gloo), and the projected time of the 20-card x 21-dataset sweep.
# Writes $OUT/gpu_sweep_check.txt. Same set-up as scripts/gpu_check.sh (wheels in .whl/ when the machine lacks them).
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
W=/tmp/gpu_sweep; rm -rf $W; mkdir -p $W/cards
N=${N_IMAGES:-50000}
source scripts/gpu_env.sh
log() { echo "$*" | tee -a "$OUT/gpu_sweep_check.txt"; }
log "== $(date -u) $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader), $(nproc) CPUs, $N images"
python3 - <<PY
import yaml
from harness.cards import get_dataset_card
from harness.data.synthetic import write_iris
card = get_dataset_card("imagenet-1k")
write_iris(card, "$W/data", [i % 1000 for i in range($N)], size=(500, 375))
for name, arch in (("vitb32_random", "ViT-B-32"), ("vitl14_random", "ViT-L-14")):
    yaml.safe_dump({"include": "$PWD/harness/cards/model_cards/_base/openai_clip.yaml", "name": name, "architecture": arch,
                    "method": "baseline", "weights": {"source": "random", "seed": 0}}, open(f"$W/cards/{name}.yaml", "w"))
PY
EV="--dataset imagenet-1k --data-root $W/data --device cuda --precision amp --no-progress --workers 14 --force"
rate() { python3 -c "import json; r=json.load(open('$1')); p=r['provenance']; print(p['images_per_second'], 'img/s pass,', p['seconds'], 's')"; }
for card in vitb32_random vitl14_random; do
  rm -rf $W/cache/pixels
  s=$(date +%s.%N); python3 -m harness eval --model $W/cards/$card.yaml $EV --results $W/cold --no-feature-cache > $W/$card.cold.log 2>&1
  log "COLD $card amp: $(rate $W/cold/$card/elevater/imagenet-1k.json), process $(echo "$(date +%s.%N) - $s" | bc) s"
  s=$(date +%s.%N); python3 -m harness eval --model $W/cards/$card.yaml $EV --results $W/warm --no-feature-cache > $W/$card.warm.log 2>&1
  log "WARM $card amp: $(rate $W/warm/$card/elevater/imagenet-1k.json), process $(echo "$(date +%s.%N) - $s" | bc) s"
  HARNESS_DIST_BACKEND=gloo torchrun --standalone --nproc_per_node 2 -m harness eval --model $W/cards/$card.yaml $EV \
    --results $W/ddp --no-feature-cache > $W/$card.ddp.log 2>&1
  python3 -c "
import json, numpy as np
a=json.load(open('$W/warm/$card/elevater/imagenet-1k.json')); b=json.load(open('$W/ddp/$card/elevater/imagenet-1k.json'))
pa=np.load('$W/warm/$card/elevater/'+a['files']['probs']); pb=np.load('$W/ddp/$card/elevater/'+b['files']['probs'])
print('DDP2 $card', b['provenance']['images_per_second'], 'img/s; identical to 1 process:', bool((pa==pb).all()))" | tee -a "$OUT/gpu_sweep_check.txt"
done
python3 - <<PY | tee -a "$OUT/gpu_sweep_check.txt"
import time, torch, open_clip
for arch, dim in (("ViT-B-32", 512), ("ViT-L-14", 768)):
    m = open_clip.create_model(arch, device="cuda").eval()
    x = torch.randn(256, 3, 224, 224, device="cuda"); w = torch.randn(dim, 1000, device="cuda")
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
        for _ in range(3): (100 * m.encode_image(x, normalize=True).float() @ w).softmax(-1)
        torch.cuda.synchronize(); t = time.perf_counter()
        for _ in range(10): (100 * m.encode_image(x, normalize=True).float() @ w).softmax(-1)
        torch.cuda.synchronize()
    print(f"FORWARD-LIMIT {arch} amp: {10 * 256 / (time.perf_counter() - t):.0f} img/s (ready tensors, batch 256)")
PY
log "projection: 20 cards x 242,000 images; see docs/gpu.md (warm rate of each architecture x its cards)"
cp $W/*.log "$OUT/" 2>/dev/null; ls $OUT
