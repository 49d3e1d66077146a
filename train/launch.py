"""Start a parameter-server training job on this machine: ``python train/launch.py -n 2 -s 1 --
python train/train.py --kv-store dist_sync ...``.

It starts the scheduler, ``-s`` servers and ``-n`` copies of the command (the workers) as
processes on 127.0.0.1 (a free port unless ``--port``), with the DMLC_* variables MXNet's
parameter server reads, waits for the workers and stops every process it started when they
end, when one fails (the others would wait for it forever), at ``--timeout`` or on Ctrl-C.

Why not ``python -m mxnet.tools.launch --launcher local``: with MXNet 1.9.1 on Python >= 3.9 its
bundled ``dmlc_tracker`` calls ``Thread.isAlive`` (removed in Python 3.9) right after starting
the scheduler, so the launcher dies with an AttributeError and leaves the scheduler running,
waiting for workers that never come (anything reading its output then seems to hang). It also
announces the machine's outward address, which needs a network interface; this launcher uses
the loopback only. Several machines: start the roles by hand (README, "Several machines").
"""
import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import time

LOGGER = logging.getLogger('vargfacenet.launch')
# the scheduler and the servers only need MXNet: importing it with DMLC_ROLE=scheduler|server
# runs that role until the job ends
ROLE_COMMAND = [sys.executable, '-c', 'import mxnet']


def free_port(host='127.0.0.1'):
    """A TCP port nobody listens on now (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def job_environment(num_workers, num_servers, host='127.0.0.1', port=None, base=None):
    """The DMLC_* variables of every process of the job (``base``: the environment to extend,
    default ``os.environ``)."""
    env = dict(os.environ if base is None else base)
    env.update(DMLC_PS_ROOT_URI=host, DMLC_PS_ROOT_PORT=str(port or free_port(host)),
               DMLC_NUM_WORKER=str(num_workers), DMLC_NUM_SERVER=str(num_servers),
               # every node announces this address (else ps-lite picks a network interface's)
               DMLC_NODE_HOST=host)
    return env


def _worker_threads(num_workers):
    """OMP threads per worker: the physical cores shared out (each worker would take them all)."""
    from vargfacenet.runtime import settings
    return max(1, settings.physical_cores() // num_workers)


def run_job(command, num_workers, num_servers=1, host='127.0.0.1', port=None, timeout=None,
            env=None, cwd=None):
    """Run ``command`` as ``num_workers`` workers of a job with ``num_servers`` servers.

    Returns
    -------
    list of int
        The workers' exit codes (by rank order of start; -SIGNAL when killed).

    Raises
    ------
    TimeoutError
        When the workers have not all ended after ``timeout`` seconds (all processes stopped).
    """
    env = job_environment(num_workers, num_servers, host, port, env)
    quiet = dict(env, OMP_NUM_THREADS='1')          # scheduler and servers only add arrays
    worker_env = dict(env)
    if 'OMP_NUM_THREADS' not in (os.environ if env is None else env):
        worker_env['OMP_NUM_THREADS'] = str(_worker_threads(num_workers))
    processes = []
    try:
        processes.append(subprocess.Popen(ROLE_COMMAND, env=dict(quiet, DMLC_ROLE='scheduler'),
                                          cwd=cwd))
        for _ in range(num_servers):
            processes.append(subprocess.Popen(ROLE_COMMAND, env=dict(quiet, DMLC_ROLE='server'),
                                              cwd=cwd))
        workers = [subprocess.Popen(list(command), env=dict(worker_env, DMLC_ROLE='worker'),
                                    cwd=cwd) for _ in range(num_workers)]
        processes += workers
        LOGGER.info('job at %s:%s: scheduler pid %d, servers %s, workers %s',
                    host, env['DMLC_PS_ROOT_PORT'], processes[0].pid,
                    [p.pid for p in processes[1:1 + num_servers]], [w.pid for w in workers])
        deadline = None if timeout is None else time.time() + timeout
        while any(w.poll() is None for w in workers):
            failed = [w for w in workers if w.poll() not in (None, 0)]
            if failed:
                # the others wait for the failed one at their next push or barrier, forever
                LOGGER.error('worker pid %d exited with %d: stopping the job', failed[0].pid,
                             failed[0].returncode)
                break
            if deadline is not None and time.time() > deadline:
                raise TimeoutError('the job did not end within %s s: stopped' % timeout)
            time.sleep(0.2)
        else:
            # the scheduler and servers end by themselves after the workers (worker 0 stops
            # them when it leaves)
            end = time.time() + 10
            while time.time() < end and any(p.poll() is None for p in processes):
                time.sleep(0.1)
        stop(processes)
        return [w.returncode for w in workers]
    finally:
        stop(processes)


def stop(processes, grace=5.0):
    """Terminate the processes still running, then kill those that outlive ``grace`` seconds."""
    running = [p for p in processes if p.poll() is None]
    for p in running:
        p.terminate()
    end = time.time() + grace
    for p in running:
        try:
            p.wait(max(0.0, end - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def build_parser():
    parser = argparse.ArgumentParser(
        description='Run a command as the workers of an MXNet parameter-server job on this '
                    'machine (scheduler, servers and workers on 127.0.0.1). Give the training '
                    'command --kv-store dist_sync.', epilog='example: python train/launch.py '
                    '-n 2 -s 1 -- python train/train.py --kv-store dist_sync --batch-size 64')
    parser.add_argument('-n', '--num-workers', type=int, required=True,
                        help='workers (copies of the command)')
    parser.add_argument('-s', '--num-servers', type=int, default=1, help='parameter servers')
    parser.add_argument('--host', default='127.0.0.1', help='address of every process')
    parser.add_argument('--port', type=int, default=0,
                        help='scheduler port (0: a free one)')
    parser.add_argument('--timeout', type=float, default=None,
                        help='stop the job after this many seconds')
    parser.add_argument('command', nargs=argparse.REMAINDER,
                        help='the worker command (after --)')
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ['--'] else args.command
    if not command:
        parser.error('give the worker command after --')
    if args.num_workers < 1 or args.num_servers < 1:
        parser.error('--num-workers and --num-servers must be >= 1')
    logging.basicConfig(level=logging.INFO, format='%(asctime)s launch %(message)s')
    # Ctrl-C reaches the whole process group; SIGTERM only this process: stop the job too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        codes = run_job(command, args.num_workers, args.num_servers, args.host,
                        args.port or None, args.timeout)
    except TimeoutError as err:
        LOGGER.error('%s', err)
        return 124
    LOGGER.info('workers exited with %s', codes)
    return next((c if c > 0 else 128 - c for c in codes if c), 0)


if __name__ == '__main__':
    sys.exit(main())
