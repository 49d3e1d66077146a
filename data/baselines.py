"""Classical face verification baselines: raw-pixel cosine and PCA+LDA ("Fisherfaces").

They calibrate a data set: how far plain pixels get, and how far a linear model trained on the
training identities gets. Both return embeddings (one row per image); cosine similarity of the
rows is the score (L2-normalise, then insightface's squared-distance protocol, as for networks).
Pure numpy and scikit-learn (imported when a model is fitted).
"""
import numpy as np

MAX_PCA_COMPONENTS = 200


def pixel_features(images):
    """``(N, H*W*C)`` float32 rows of the raw pixel values (0..255) of ``N`` images."""
    images = np.asarray(images)
    if images.ndim < 2 or not len(images):
        raise ValueError('expected a non-empty stack of images, got shape %s' % (images.shape,))
    return images.reshape(len(images), -1).astype(np.float32)


def raw_pixel_embeddings(images):
    """The raw-pixel baseline: every image is its own pixel vector (cosine compares them)."""
    return pixel_features(images)


def centred_pixel_embeddings(images):
    """Pixel vectors minus their own mean (cosine of these = Pearson correlation of pixels):
    raw pixels without the overall-brightness offset."""
    x = pixel_features(images)
    return x - x.mean(axis=1, keepdims=True)


def pca(x, num_components):
    """Exact PCA of the rows of ``x`` (N, D), for N much smaller than D.

    Eigendecomposition of the N x N Gram matrix of the centred rows (products in float32, the
    eigensolver in float64): sklearn's ``PCA(svd_solver='full')`` up to the sign of each
    component (here the largest-magnitude entry of each is positive), at a fraction of its cost
    (4 s instead of 70 s for 1,500 faces here) and without the randomized solver's dependence on
    a seed. Components beyond the rank of the centred rows are dropped.

    Returns
    -------
    mean : (D,) float32
    components : (D, k) float32, orthonormal columns, by decreasing variance (k <= num_components)
    variances : (k,) float64, the variance along each component
    """
    x = np.asarray(x, np.float32)
    mean = x.mean(axis=0, dtype=np.float64).astype(np.float32)
    centred = x - mean
    gram = (centred @ centred.T).astype(np.float64)
    values, vectors = np.linalg.eigh(gram)
    order = np.argsort(values)[::-1][:int(num_components)]
    order = order[values[order] > values.max() * 1e-10]
    components = (centred.T @ vectors[:, order].astype(np.float32)) / \
        np.sqrt(values[order]).astype(np.float32)
    components *= np.sign(components[np.abs(components).argmax(axis=0),
                                     np.arange(components.shape[1])])
    return mean, components, values[order] / max(1, len(x) - 1)


class PcaLda:
    """PCA to at most ``max_components`` dimensions, then LDA over the identities.

    The PCA (:func:`pca`, exact) keeps ``min(max_components, N - K)`` components for ``N``
    training images of ``K`` identities (Fisherfaces: at most ``N - K`` keeps the within-class
    scatter invertible); scikit-learn's LDA then projects onto its ``min(K - 1, components)``
    discriminant directions.

    Attributes (after :meth:`fit`): ``mean``, ``components`` (the PCA), ``lda`` (the
    scikit-learn model), ``num_components`` (PCA), ``embedding_size`` (LDA).
    """

    def __init__(self, max_components=MAX_PCA_COMPONENTS):
        self.max_components = int(max_components)
        self.mean = self.components = self.lda = None
        self.num_components = self.embedding_size = None

    def fit(self, images, labels):
        """Fit on training ``images`` (N, H, W, C) of identity ``labels`` (N ints)."""
        from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
        x = pixel_features(images)
        labels = np.asarray(labels)
        if labels.shape != (len(x),):
            raise ValueError('%d images but labels of shape %s' % (len(x), labels.shape))
        classes = np.unique(labels)
        if len(classes) < 2:
            raise ValueError('LDA needs at least two identities, got %d' % len(classes))
        wanted = min(self.max_components, len(x) - len(classes))
        if wanted < 1:
            raise ValueError('%d images of %d identities: LDA needs identities with more than '
                             'one image' % (len(x), len(classes)))
        self.mean, self.components, _ = pca(x, wanted)
        self.lda = LinearDiscriminantAnalysis(solver='svd')
        self.lda.fit(self._project(x), labels)
        self.num_components = self.components.shape[1]
        self.embedding_size = min(len(classes) - 1, self.num_components)     # sklearn's rule
        return self

    def _project(self, x):
        return (x - self.mean) @ self.components

    def transform(self, images):
        """``(N, embedding_size)`` float64 embeddings of ``images``."""
        if self.lda is None:
            raise RuntimeError('PcaLda.transform before fit')
        return self.lda.transform(self._project(pixel_features(images)))


def pca_lda_embeddings(train_images, train_labels, images, max_components=MAX_PCA_COMPONENTS):
    """Embeddings of ``images`` by a :class:`PcaLda` fitted on the training images."""
    return PcaLda(max_components).fit(train_images, train_labels).transform(images)
