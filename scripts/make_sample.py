"""Write samples/lenet_maxout.caffemodel: the sample net trained on Fashion-MNIST.

Trains the experiment's LeNet-maxout (caffe_surgery.reproduce's train/test
nets, the reference solver settings: 3749 SGD iterations at batch 64, inputs
scaled by 1/255) on the Fashion-MNIST training set from Debian's
dataset-fashion-mnist, then keeps the weights of the layers the deploy
prototxt samples/lenet_maxout.prototxt has. Needs the train extra (PyTorch).

Usage: python scripts/make_sample.py [--max-iter N]
"""
import argparse
import pathlib
import tempfile

from caffe_surgery.data import convert_data
from caffe_surgery.io import write_text
from caffe_surgery.model import load_model
from caffe_surgery.reproduce import REFERENCE_MAX_ITER, TEST_BATCH, TRAIN_BATCH, lenet_maxout_text, solver_param
from caffe_surgery.save import save_caffemodel
from caffe_surgery.train import train

SAMPLES = pathlib.Path(__file__).resolve().parent.parent / "samples"
FASHION = pathlib.Path("/usr/share/datasets/fashion-mnist")


def main() -> None:
    """Train, then save the deploy net's weights beside its prototxt."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-iter", type=int, default=REFERENCE_MAX_ITER)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        work = pathlib.Path(work)
        for name, kind in (("train", "train"), ("test", "t10k")):
            spec = f"idx:{FASHION}/{kind}-images-idx3-ubyte.gz:{FASHION}/{kind}-labels-idx1-ubyte.gz"
            convert_data(spec, str(work / f"{name}_lmdb"))
            batch = TRAIN_BATCH if name == "train" else TEST_BATCH
            (work / f"{name}.prototxt").write_text(lenet_maxout_text(str(work / f"{name}_lmdb"), batch, name == "train"))
        write_text(work / "solver.prototxt", solver_param(work / "train.prototxt", work / "test.prototxt", args.max_iter))
        train(str(work / "solver.prototxt"), output=work / "trained.caffemodel", device="cpu")
        sample = load_model(SAMPLES / "lenet_maxout.prototxt", work / "trained.caffemodel")
        save_caffemodel(sample.net, SAMPLES / "lenet_maxout.caffemodel")


if __name__ == "__main__":
    main()
