"""`llava-moslora web` on tiny MoSLoRA checkpoints: a server started on a free localhost port,
driven through gradio_client (the page's own API) and, where Chromium is installed, a real
headless browser. Answers must be the CLI chat's, streamed; side-by-side models answer as each
does alone; a bad image or a model that cannot load gets a message and the server goes on."""
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from helpers import ROOT, free_port, save_tiny_checkpoint, wait_for_server

pytest.importorskip("gradio_client", reason="the web demo's tests need gradio_client (the web extra)")
from gradio_client import Client, handle_file  # noqa: E402

QUESTIONS = ["What color is it?", "Describe the image."]
TOKENS = 12


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("web-images")
    Image.new("RGB", (48, 40), (220, 40, 40)).save(folder / "test_000000.png")
    Image.new("RGB", (32, 32), (40, 80, 225)).save(folder / "test_000001.png")
    (folder / "broken.png").write_bytes(b"not a png")
    return folder


@pytest.fixture(scope="module")
def models(tiny_checkpoint, tiny_bases, tmp_path_factory):
    """Two checkpoints whose adapters differ, and a path that is no checkpoint."""
    # large adapters: its greedy answers must differ from the first model's whatever the bases drew
    other = save_tiny_checkpoint(tiny_bases, tmp_path_factory.mktemp("ckpt2") / "moslora-seed1", seed=1, scale=0.5)
    return [str(tiny_checkpoint), str(other), str(tmp_path_factory.mktemp("nothing") / "missing")]


@pytest.fixture(scope="module")
def server(models, images):
    port = free_port()
    command = [sys.executable, "-m", "llava_moslora", "web", "--port", str(port), "--examples", str(images)]
    process = subprocess.Popen([*command, *[a for m in models for a in ("--model", m)]], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    problem = wait_for_server(process, url)
    assert problem is None, problem
    yield url
    process.terminate()
    process.wait(timeout=30)


def chat_answers(model, image):
    """What `llava-moslora chat --prompt` answers to QUESTIONS, one conversation."""
    args = [a for q in QUESTIONS for a in ("--prompt", q)]
    result = subprocess.run([sys.executable, "-m", "llava_moslora", "chat", "--model", model, "--image", str(image),
                             "--max_new_tokens", str(TOKENS), *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.splitlines()


def text(message):
    content = message["content"]
    return content if isinstance(content, str) else "".join(part.get("text", "") for part in content)


def ask(client, question, image, tokens=TOKENS):
    """Every streamed output of one question: [(pane, pane, pane, status), ...]."""
    return list(client.submit(question, handle_file(str(image)), 0, 1, tokens, api_name="/ask"))


def test_two_turns_stream_the_cli_chats_answers_side_by_side(server, models, images):
    image = images / "test_000000.png"
    expected = [chat_answers(model, image) for model in models[:2]]
    assert expected[0] != expected[1]  # the two models differ, so the panes can be told apart
    client = Client(server, verbose=False)
    for turn, question in enumerate(QUESTIONS):
        outputs = ask(client, question, image)
        *panes, status = outputs[-1]
        assert status == "done"
        for m, pane in enumerate(panes[:2]):
            shown = ["[image] " + QUESTIONS[0], *QUESTIONS[1:]]  # the page marks the turn that brought the image
            assert [text(x) for x in pane] == [piece for q, a in zip(shown[:turn + 1], expected[m])
                                               for piece in (q, a)]
            partial = [text(o[m][-1]) for o in outputs if len(o[m]) == 2 * (turn + 1)]
            assert all(expected[m][turn].startswith(p.strip()) for p in partial), partial  # pieces add up
        assert any(o[-1] == "answering..." for o in outputs)  # it streamed before it was done


def test_a_model_that_cannot_load_gets_a_message_in_its_pane(server, models, images):
    panes = ask(Client(server, verbose=False), QUESTIONS[0], images / "test_000000.png")[-1][:-1]
    assert len(panes[2]) == 1 and "could not load" in text(panes[2][0]) and models[2] in text(panes[2][0])
    assert len(panes[0]) == 2 and len(panes[1]) == 2  # the others answered


def test_a_bad_image_gets_a_message_and_the_next_request_works(server, images):
    client = Client(server, verbose=False)
    *panes, status = ask(client, QUESTIONS[0], images / "broken.png")[-1]
    assert status.startswith("cannot use this image") and all(pane in ([], None) or len(pane) <= 1 for pane in panes)
    assert ask(client, QUESTIONS[0], images / "test_000001.png")[-1][-1] == "done"


def test_a_decompression_bomb_gets_a_message_naming_the_limit_and_the_page_goes_on(server, images, tmp_path):
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(bomb, optimize=True)  # ~50 KB on disk, 1.2 GB as RGB pixels
    client = Client(server, verbose=False)
    *panes, status = ask(client, QUESTIONS[0], bomb)[-1]
    assert status.startswith("cannot use this image") and "over the limit" in status and "--max_image_pixels" in status
    assert ask(client, QUESTIONS[0], images / "test_000001.png")[-1][-1] == "done"


def test_an_over_long_prompt_and_a_long_conversation_are_said_and_the_page_goes_on(server, images):
    """The tiny models read 1,024 positions: a 2,400-word question cannot fit; a conversation that
    outgrows the context drops its oldest turns and the status says so."""
    client = Client(server, verbose=False)
    *panes, status = ask(client, " ".join(["the red circle is above the square"] * 343), images / "test_000000.png")[-1]
    assert "cannot answer" in status and "the model reads at most 1024" in status
    question = " ".join(["and what about the blue square to the left of the small red circle"] * 4)
    for turn in range(40):
        *panes, status = ask(client, question, images / "test_000000.png")[-1]
        if "no longer fit" in status:
            break
    assert "no longer fit the model's context" in status, (turn, status)
    assert len(panes[0]) == 2 * (turn + 1)  # the page shows the whole conversation
    assert "cannot" not in ask(client, "What color is it?", images / "test_000000.png")[-1][-1]


def test_two_tabs_keep_their_own_conversations(server, models, images):
    first, second = Client(server, verbose=False), Client(server, verbose=False)
    ask(first, QUESTIONS[0], images / "test_000000.png")
    ask(second, QUESTIONS[0], images / "test_000001.png")
    panes = ask(first, QUESTIONS[1], images / "test_000000.png")[-1]
    assert [text(x) for x in panes[0]][1::2] == chat_answers(models[0], images / "test_000000.png")
    assert len(ask(second, QUESTIONS[1], images / "test_000001.png")[-1][0]) == 4


def test_a_new_image_joins_the_conversation_and_clear_starts_over(server, images):
    client = Client(server, verbose=False)
    ask(client, QUESTIONS[0], images / "test_000000.png")
    pane = ask(client, "Which one is blue?", images / "test_000001.png")[-1][0]
    assert [text(x) for x in pane][0::2] == [f"[image] {QUESTIONS[0]}", "[image] Which one is blue?"]
    client.predict(api_name="/clear")
    assert len(ask(client, QUESTIONS[1], images / "test_000001.png")[-1][0]) == 2


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (apt-get install chromium) for the real-browser test")
def test_in_a_real_browser_an_uploaded_image_gets_the_cli_answer(server, models, images, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api", reason="the browser test drives Chromium with playwright")
    image = images / "test_000000.png"
    expected = chat_answers(models[0], image)[0]
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(server)
        page.wait_for_selector("textarea", timeout=60000)
        assert page.get_by_text("held-out ShapesVQA images").count() >= 1  # the examples are offered
        page.set_input_files("input[type=file]", str(image))
        page.wait_for_function("document.querySelector('#status').innerText.includes('image 1 added')", timeout=60000)
        page.fill("textarea", QUESTIONS[0])
        page.get_by_role("button", name="Send").click()
        page.wait_for_function("document.querySelector('#status').innerText.includes('done')", timeout=120000)
        page.screenshot(path=str(tmp_path / "web.png"), full_page=True)
        assert expected in page.inner_text("body")
        browser.close()
    print(f"\nscreenshot: {tmp_path / 'web.png'}")


def test_regenerate_repeats_a_greedy_answer_and_clear_starts_over(server, images):
    client = Client(server, verbose=False)
    first = ask(client, QUESTIONS[0], images / "test_000000.png")[-1]
    again = list(client.submit(handle_file(str(images / "test_000000.png")), 0, 1, TOKENS, api_name="/regenerate"))[-1]
    assert again[:2] == first[:2] and again[-1] == "done"  # the last turn replaced, not appended
    cleared = client.predict(api_name="/clear")
    assert cleared[0] in ([], None) and cleared[-1] == "new conversation"


def test_examples_come_from_the_flag_only(tmp_path, monkeypatch):
    from PIL import Image

    from llava_moslora.serve.web import example_images

    folder = tmp_path / "mine"
    folder.mkdir()
    for name in ("b.jpg", "a.PNG", "c.webp", "d.png", "e.png", "notes.txt"):
        (folder / name).write_bytes(b"") if name.endswith(".txt") else Image.new("RGB", (4, 4)).save(
            folder / name, format={"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[name.rsplit(".", 1)[1].lower()])
    assert [p.rsplit("/", 1)[1] for p in example_images(str(folder))] == ["a.PNG", "b.jpg", "c.webp", "d.png"]
    monkeypatch.chdir(tmp_path)  # nothing is looked for relative to where the command runs
    (tmp_path / "runs" / "quickstart" / "data" / "images").mkdir(parents=True)
    assert example_images(None) == []
    with pytest.raises(FileNotFoundError, match="--examples"):
        example_images(str(tmp_path / "nowhere"))
