"""The teacher of the embedded default: the student's recipe trained twice as long, once, then
reused by every later run of the main job."""
import copy

from vargfacenet.train.configs.embedded import CONFIG as STUDENT

CONFIG = copy.deepcopy(STUDENT)
CONFIG['schedule']['max_steps'] = 2 * STUDENT['schedule']['max_steps']
