"""Classical baselines: exact PCA, PCA+LDA, and the synthetic set's --baselines command."""
import json
import os

import numpy as np
import pytest

from vargfacenet.data.baselines import (PcaLda, centred_pixel_embeddings, pca,
                                        raw_pixel_embeddings)
from vargfacenet.data.synthetic import build_dataset, compute_baselines, main


def test_pca_equals_sklearn_full_svd():
    from sklearn.decomposition import PCA
    rng = np.random.RandomState(0)
    x = (rng.randn(30, 400) * np.linspace(5, 0.1, 400)).astype(np.float32)
    mean, components, variances = pca(x, 10)
    reference = PCA(10, svd_solver='full').fit(x)
    np.testing.assert_allclose(mean, reference.mean_, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(variances, reference.explained_variance_, rtol=1e-4)
    # same components; sklearn's sign rule differs, so compare up to sign
    signs = np.sign(np.sum(components * reference.components_.T, axis=0))
    assert (np.abs(signs) == 1).all()
    np.testing.assert_allclose(components * signs, reference.components_.T, atol=1e-4)
    np.testing.assert_allclose(components.T @ components, np.eye(10), atol=1e-5)
    assert pca(x[:5], 10)[1].shape == (400, 4)            # rank 4 after centring: 4 components


def test_pixel_embeddings_and_pca_lda_fit():
    images = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    raw = raw_pixel_embeddings(images)
    assert raw.shape == (2, 48) and raw.dtype == np.float32 and raw[1, 0] == 48
    np.testing.assert_allclose(centred_pixel_embeddings(images).sum(axis=1), 0, atol=1e-4)
    # three well-separated identities: LDA embeds an image next to its own identity's mean
    rng = np.random.RandomState(0)
    centres = rng.uniform(0, 255, (3, 8, 8, 3))
    labels = np.repeat(np.arange(3), 6)
    train = np.clip(centres[labels] + rng.normal(0, 20, (18, 8, 8, 3)), 0, 255).astype(np.uint8)
    model = PcaLda(max_components=200).fit(train, labels)
    assert (model.num_components, model.embedding_size) == (15, 2)    # N - K, K - 1
    emb = model.transform(train)
    means = np.array([emb[labels == k].mean(0) for k in range(3)])
    nearest = np.argmin(((emb[:, None] - means[None]) ** 2).sum(-1), axis=1)
    assert nearest.tolist() == labels.tolist()
    with pytest.raises(ValueError, match='more than one image'):
        PcaLda().fit(train[:3], [0, 1, 2])
    with pytest.raises(ValueError, match='two identities'):
        PcaLda().fit(train[:3], [0, 0, 0])
    with pytest.raises(RuntimeError, match='before fit'):
        PcaLda().transform(train)


def test_baselines_command_on_the_tiny_set(tmp_path, capsys):
    root = str(tmp_path / 'tiny')
    main(['--out', root, '--preset', 'tiny', '--workers', '1', '--baselines'])
    with open(os.path.join(root, 'baselines.json')) as f:
        result = json.load(f)
    assert set(result['packs']) == {'synth_lfw'}
    assert (result['train_images'], result['train_identities']) == (32, 8)
    assert (result['pca_components'], result['lda_dimensions']) == (24, 7)   # N - K, K - 1
    for method, acc in result['packs']['synth_lfw'].items():
        assert acc['num_pairs'] == 20 and len(acc['accuracies']) == 10, method
        assert set(acc['accuracies']) <= {0.0, 0.5, 1.0}                     # 2 pairs a fold
        assert acc['accuracy_mean'] == pytest.approx(np.mean(acc['accuracies']))
        assert acc['accuracy_std'] == pytest.approx(np.std(acc['accuracies']))
    out = capsys.readouterr().out
    assert '| synth_lfw | 20 |' in out and 'PCA(24)+LDA(7)' in out
    capped = compute_baselines(root, max_train_images=16)      # every other image
    assert (capped['train_images'], capped['train_identities']) == (16, 8)
    assert (capped['pca_components'], capped['lda_dimensions']) == (8, 7)
    stamp = os.path.getmtime(os.path.join(root, 'train', 'train.rec'))
    main(['--out', root, '--preset', 'tiny', '--baselines'])                # reuses the set
    assert os.path.getmtime(os.path.join(root, 'train', 'train.rec')) == stamp


def test_pca_lda_beats_raw_pixels(tmp_path):
    """On 30 training identities x 12 images and a 200-pair pack, PCA+LDA scores 0.845 and raw
    pixels 0.55 (seed 0); with the training labels shuffled, PCA+LDA would be at chance too."""
    root = build_dataset(str(tmp_path / 's'), 'tiny', seed=0, workers=1, train_ids=30,
                         train_images=12, pack_ids=30, pack_images=4, pack_pairs=200)['root']
    result = compute_baselines(root)
    scores = {m: acc['accuracy_mean'] for m, acc in result['packs']['synth_lfw'].items()}
    assert all(acc['num_pairs'] == 200 for acc in result['packs']['synth_lfw'].values())
    assert (result['pca_components'], result['lda_dimensions']) == (200, 29)
    assert scores['pca_lda'] > 0.75
    best_pixels = max(scores['raw_pixel_cosine'], scores['centred_pixel_cosine'])
    assert best_pixels < 0.7 and scores['pca_lda'] > best_pixels + 0.15
