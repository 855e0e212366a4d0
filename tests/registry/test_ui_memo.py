"""The UI's page memo and the shared stderr swap, under threads as the server's requests run them."""

import os
import threading
import time

from registry.lineage import quiet_stderr
from registry.ui_memo import Memo


def test_a_page_two_threads_ask_for_at_once_is_drawn_once():
    memo, drawn, answers = Memo(), [], []

    def draw():
        drawn.append(threading.get_ident())
        time.sleep(0.3)
        return "page"

    threads = [threading.Thread(target=lambda: answers.append(memo.get("key", draw))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert answers == ["page"] * 3 and len(drawn) == 1


def test_a_failed_drawing_lets_the_waiting_thread_draw_for_itself():
    memo, started, answers = Memo(), threading.Event(), []

    def failing():
        started.set()
        time.sleep(0.2)
        raise OSError("the store went away")

    def first():
        try:
            memo.get("key", failing)
        except OSError:
            answers.append("failed")

    one = threading.Thread(target=first)
    one.start()
    started.wait(5)
    answers.append(memo.get("key", lambda: "drawn again"))
    one.join(5)
    assert sorted(answers) == ["drawn again", "failed"]
    assert memo.get("key", lambda: "not drawn") == "drawn again"


def test_overlapping_quiet_stderr_in_two_threads_gives_fd_2_back():
    before = os.fstat(2)
    inside, release = threading.Event(), threading.Event()

    def hold():
        with quiet_stderr(True):
            inside.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    inside.wait(5)
    with quiet_stderr(True):  # enters while the other holds it, leaves first
        assert os.fstat(2).st_ino == os.stat(os.devnull).st_ino
    assert os.fstat(2).st_ino == os.stat(os.devnull).st_ino, "still quiet while the other thread is inside"
    release.set()
    holder.join(5)
    after = os.fstat(2)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)
