"""The fc7 capacity table of the README ("Several machines"), checked by hand."""
from vargfacenet.train import capacity


def test_fc7_capacity_hand_example():
    # 8 GiB, embedding 512, batch 128: 4 bytes x (3 x 512 + 2 x 128) = 7,168 bytes an
    # identity; 8 x 2**30 / 7,168 = 1,198,372.57
    assert capacity.fc7_bytes(1) == 7168
    assert capacity.fc7_bytes(10, 128, 64) == 4 * 10 * (3 * 128 + 2 * 64)
    assert capacity.max_identities(8 * 2 ** 30) == 1198372
    assert capacity.fc7_bytes(1198372) <= 8 * 2 ** 30 < capacity.fc7_bytes(1198373)
    # embedding 128: 2,560 bytes an identity
    assert capacity.max_identities(8 * 2 ** 30, 128) == 3355443


def test_capacity_command_prints_the_table(capsys):
    capacity.main(['--memory-gib', '8', '80', '--emb-size', '512'])
    out = capsys.readouterr().out
    assert '| 8 GiB | 1,198,372 |' in out and '| 80 GiB | 11,983,725 |' in out
