"""Training from Python: single steps, the whole loop over a dataset or an iterator, progress
callbacks, and stopping (an exception or Ctrl-C) that leaves a checkpoint resuming exactly."""

import os
import signal
import threading

import numpy as np
import pytest

import crosscoder as cc
from conftest import small_model


def config(steps=60, batch_size=128, **kwargs):
    return cc.TrainConfig(steps=steps, batch_size=batch_size, warmup_steps=5,
                          learning_rate=1e-3, seed=3, **kwargs)


def test_train_config_keywords_and_json():
    c = cc.TrainConfig(steps=10, learning_rate=2e-3, partition_l1=[0.5, 0.0, 0.0])
    assert c.steps == 10 and abs(c.learning_rate - 2e-3) < 1e-9
    assert cc.TrainConfig.from_json(c.to_json()).partition_l1 == [0.5, 0.0, 0.0]
    with pytest.raises(cc.Error, match="learning_rat"):
        cc.TrainConfig(learning_rat=1.0)


def test_steps_reduce_the_loss(rows):
    model = small_model("batchtopk")
    trainer = cc.Trainer(model, config(steps=200))
    rng = np.random.default_rng(0)
    first = trainer.step(rows[:128])
    for _ in range(199):
        last = trainer.step(rows[rng.integers(0, len(rows), 128)])
    assert trainer.steps_done == 200 and last.step == 200
    assert last.loss < 0.5 * first.loss
    assert len(last.fve) == 2 and all(f > 0.3 for f in last.fve)


def parameters_of(model):
    return {k: v.copy() for k, v in model.parameters().items()}


def test_train_over_a_dataset_calls_back_every_step(tmp_path, dataset):
    data, _, _ = dataset
    model = small_model("batchtopk")
    trainer = cc.Trainer(model, config(steps=40))
    seen = []
    report = cc.train(trainer, data, progress=False,
                      on_step=lambda r, rate: seen.append((r.step, rate)))
    assert [s for s, _ in seen] == list(range(1, 41))
    assert all(rate > 0 for _, rate in seen)
    assert report.step == 40 and trainer.steps_done == 40


def test_an_exception_in_the_callback_stops_with_a_checkpoint_that_resumes_exactly(tmp_path, dataset):
    data, _, _ = dataset
    whole = small_model("batchtopk")
    cc.train(cc.Trainer(whole, config(steps=50)), data, progress=False)

    checkpoint = str(tmp_path / "run.train.safetensors")
    model = small_model("batchtopk")

    def stop_at_20(report, _rate):
        if report.step == 20:
            raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        cc.train(cc.Trainer(model, config(steps=50)), data, checkpoint=checkpoint,
                 progress=False, on_step=stop_at_20)
    assert os.path.exists(checkpoint)

    resumed = small_model("batchtopk", seed=99)  # the checkpoint replaces its weights
    trainer = cc.Trainer(resumed, config(steps=50))
    cc.train(trainer, data, checkpoint=checkpoint, resume=True, progress=False)
    assert trainer.steps_done == 50
    for name, value in parameters_of(whole).items():
        np.testing.assert_array_equal(resumed.parameters()[name], value, err_msg=name)


def test_ctrl_c_stops_cleanly_and_leaves_a_resumable_checkpoint(tmp_path, dataset):
    data, _, _ = dataset
    checkpoint = str(tmp_path / "run.train.safetensors")
    model = small_model("topk")
    trainer = cc.Trainer(model, config(steps=100000, batch_size=64))
    started = threading.Event()

    def on_step(report, _rate):
        if report.step == 5:
            started.set()

    timer = threading.Thread(target=lambda: started.wait(60) and os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt, match="resume to continue"):
        cc.train(trainer, data, checkpoint=checkpoint, progress=False, on_step=on_step)
    timer.join()
    stopped_at = trainer.steps_done
    assert 5 <= stopped_at < 100000
    again = cc.Trainer(small_model("topk"), config(steps=stopped_at + 3, batch_size=64))
    cc.train(again, data, checkpoint=checkpoint, resume=True, progress=False)
    assert again.steps_done == stopped_at + 3


def test_resume_on_other_data_is_refused(tmp_path, dataset, rows):
    data, _, _ = dataset
    checkpoint = str(tmp_path / "run.train.safetensors")
    cc.train(cc.Trainer(small_model(), config(steps=3)), data, checkpoint=checkpoint,
             progress=False)
    batches = (rows[:128] for _ in range(10))
    with pytest.raises(cc.Error, match="cannot resume"):
        cc.train(cc.Trainer(small_model(), config(steps=6)), batches, checkpoint=checkpoint,
                 resume=True, progress=False)


def test_train_from_an_iterator_equals_the_same_steps_by_hand(rows):
    rng = np.random.default_rng(5)
    batches = [rows[rng.integers(0, len(rows), 128)] for _ in range(25)]
    by_hand = small_model("batchtopk")
    trainer = cc.Trainer(by_hand, config(steps=25))
    for batch in batches:
        trainer.step(batch)
    streamed = small_model("batchtopk")
    cc.train(cc.Trainer(streamed, config(steps=25)), iter(batches), progress=False,
             data_identity="test batches")
    for name, value in parameters_of(by_hand).items():
        np.testing.assert_array_equal(streamed.parameters()[name], value, err_msg=name)


def test_a_short_or_malformed_iterator_is_an_error(rows):
    with pytest.raises(cc.Error, match="ended at step 3"):
        cc.train(cc.Trainer(small_model(), config(steps=5)), [rows[:128]] * 2, progress=False)
    with pytest.raises(cc.Error, match="has 64 rows, but batch_size is 128"):
        cc.train(cc.Trainer(small_model(), config(steps=5)), [rows[:64]] * 5, progress=False)
    with pytest.raises(cc.Error, match="float64"):
        cc.train(cc.Trainer(small_model(), config(steps=5)), [rows[:128].astype(np.float64)] * 5,
                 progress=False)
