# Both folds of the mask head, then every prediction (about 25 minutes on 2 cores); see mask_head.py.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p work/maskhead
M=lab/maskhead/mask_head.py
for f in 0 1; do
  [ -f work/maskhead/fold$f.pt ] || python $M train --fold $f --out work/maskhead/fold$f.pt --steps 800
done
python $M predict --checkpoint work/maskhead/fold0.pt --set cityscapes-train --fold 1 --out work/maskhead/pred_train_fold1.json
python $M predict --checkpoint work/maskhead/fold1.pt --set cityscapes-train --fold 0 --out work/maskhead/pred_train_fold0.json
python $M predict --checkpoint work/maskhead/fold0.pt --set cityscapes-dev --out work/maskhead/pred_dev_fold0.json
python $M predict --checkpoint work/maskhead/fold1.pt --set cityscapes-dev --out work/maskhead/pred_dev_fold1.json
python -c "import json; json.dump(json.load(open('work/maskhead/pred_train_fold0.json')) + json.load(open('work/maskhead/pred_train_fold1.json')), open('work/maskhead/pred_train.json', 'w'))"
[ -f work/c16_cs_maskhead/manifest.json ] || bpr-build-patches --gt ../shared/data/cityscapes-train/gt.json \
  --images ../shared/data/cityscapes-train/images --coarse work/maskhead/pred_train.json --draws 0 --context 16 \
  --seed 61 --out work/c16_cs_maskhead --workers 2 --quiet
