"""The seed example's code (PaddleAudio examples/audio_tagging), kept as a reference implementation for parity tests.

`split` is audio_tag.py's windowing; `smooth`, `generate_topk_label` and `parse_result` are parse_result.py, unchanged
except that paddleaudio's logger is gone and `main`'s argparse became keyword arguments. Do not "fix" anything here:
the point is to compare streamtag with what the seed does.

`np.load(..., allow_pickle=True)` is the seed's; tests only ever pass it npz files they built themselves.
"""

import os

import numpy as np


def split(waveform: np.ndarray, win_size: int, hop_size: int):
    time = []
    data = []
    for i in range(0, len(waveform), hop_size):
        segment = waveform[i:i + win_size]
        if len(segment) < win_size:
            segment = np.pad(segment, (0, win_size - len(segment)))
        data.append(segment)
        time.append(i / len(waveform))
    return time, data


def smooth(results: np.ndarray, win_size: int):
    """
    Execute posterior smoothing in-place.
    """
    for i in range(len(results) - 1, -1, -1):
        if i < win_size - 1:
            left = 0
        else:
            left = i + 1 - win_size
        results[i] = np.sum(results[left:i + 1], axis=0) / (i - left + 1)


def generate_topk_label(k: int, label_map: dict, result: np.ndarray):
    """
    Return top k result.
    """
    result = np.asarray(result)
    topk_idx = (-result).argsort()[:k]

    ret = ''
    for idx in topk_idx:
        label, score = label_map[idx], result[idx]
        ret += f'{label}: {score}\n'
    return ret


def parse_result(tagging_file, top_k=10, smooth_on=True, smooth_size=5, label_file='./assets/audioset_labels.txt',
                 output_dir='./output_dir'):
    label_map = {}
    with open(label_file, 'r') as f:
        for i, l in enumerate(f.readlines()):
            label_map[i] = l.strip()

    results = np.load(tagging_file, allow_pickle=True)
    times, scores = results['time'], results['scores']

    if smooth_on:
        smooth(scores, win_size=smooth_size)

    if not os.path.exists(output_dir):
        os.makedirs(output_dir)
    output_file = os.path.join(output_dir, os.path.basename(tagging_file).split('.')[0] + '.txt')
    with open(output_file, 'w') as f:
        for time, score in zip(times, scores):
            f.write(f'{time}\n')
            f.write(generate_topk_label(top_k, label_map, score))
            f.write('\n')
    return output_file
