"""`llava-moslora web`: the chat room in a browser, one process (Gradio).

Every --model (stage checkpoint or merged directory) is loaded once at start; with several, the
same question goes to each and the answers stream side by side. Replies come from chat.py's
ChatSession, the CLI's own conversation (same prompt rendering, same streamer). Conversations
live in each page's session state, so two browser tabs never share one, and Gradio's queue runs
one generation at a time. A new image joins the conversation, as `/image` does in the CLI (the
next question is about it, the earlier images stay in view); Clear starts over. A model that
fails to load, or an image that cannot be read, shows a message in the page and the server stays up.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from PIL import Image

from ..data.images import MAX_IMAGE_PIXELS, PIXELS_HELP, ImageError, read_image, set_max_image_pixels, to_rgb
from ..data.templates import IMAGE_TOKEN
from ..model import DTYPES, inference_device, inference_dtype, load_checkpoint
from ..model.quantize import loading_quantization
from ..names import BITS, BITS_HELP, TEMPLATE_HELP
from ..model.inference import PromptTooLong
from .chat import ChatSession, Reply

EXAMPLE_QUESTION = "How many shapes are in the image?"
EXAMPLES_SHOWN = 4
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class Model:
    """One --model: its answerer, or why it could not be loaded."""
    path: str  # as given: the pane's title
    answerer: Optional[object] = None
    error: Optional[str] = None


def load_models(paths: list[str], device: str, dtype: str, bits: Optional[int] = None,
                template: Optional[str] = None) -> list[Model]:
    """Each model loaded, or its error kept for the page (the server starts either way)."""
    from ..model.inference import Answerer

    models = []
    for path in paths:
        start = time.perf_counter()
        try:
            bundle = load_checkpoint(path, dtype=inference_dtype(dtype, device), quantization=loading_quantization(bits),
                                     template=template)
            models.append(Model(path, answerer=Answerer(bundle, device=device)))
            print(f"web: loaded {path} ({bundle.recipe.template} template) on {device} in "
                  f"{time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
        except Exception as error:  # shown in its pane; the other models still serve
            models.append(Model(path, error=f"{type(error).__name__}: {error}"))
            print(f"web: could not load {path}: {error}", file=sys.stderr, flush=True)
    return models


@dataclass
class Conversation:
    """One page's conversation: its images (with keys, to notice a new one) and each model's turns."""
    images: list = field(default_factory=list)
    image_keys: list = field(default_factory=list)
    histories: list = field(default_factory=list)

    def add(self, image: Image.Image) -> bool:
        """Add the image unless the conversation has it already; whether it was added."""
        key = image_key(image)
        if key in self.image_keys:
            return False
        self.images.append(image)
        self.image_keys.append(key)
        return True


class UnreadableImage(str):
    """What the image box hands over when the upload is not an image: the reason."""


def image_key(image: Optional[Image.Image]) -> Optional[str]:
    return None if image is None else hashlib.sha1(image.tobytes() + str(image.size).encode()).hexdigest()


def open_image(value) -> Image.Image:
    """The image box's value as an RGB image (data.images.to_rgb, as training converts it);
    ImageError when unreadable or over the pixel limit."""
    if isinstance(value, UnreadableImage):
        raise ImageError(str(value))
    return to_rgb(value) if isinstance(value, Image.Image) else read_image(value, "this image")


def messages(history: list, pending: Optional[tuple[str, str]] = None) -> list[dict]:
    """Chatbot messages for (question, reply) turns, plus the turn being generated."""
    turns = [*history, *([pending] if pending else [])]
    return [message for question, reply in turns
            for message in ({"role": "user", "content": shown(question)}, {"role": "assistant", "content": reply})]


def shown(question: str) -> str:
    """A question as the page shows it: its image placeholders as a count ("[2 images] ...")."""
    count = question.count(IMAGE_TOKEN)
    text = question.replace(f"{IMAGE_TOKEN}\n", "").replace(IMAGE_TOKEN, "").strip()
    return text if count == 0 else f"[{count} image{'s' * (count > 1)}] {text}" if count > 1 else f"[image] {text}"


class Demo:
    """The page's behaviour, apart from its layout: what each event does to a Conversation."""

    def __init__(self, models: list[Model]) -> None:
        self.models = models

    def panes(self, conversation: Conversation) -> list[list[dict]]:
        return [messages(history) if model.error is None else
                [{"role": "assistant", "content": f"could not load {model.path}: {model.error}"}]
                for model, history in zip(self.models, self._histories(conversation))]

    def _histories(self, conversation: Conversation) -> list:
        if len(conversation.histories) != len(self.models):
            conversation.histories = [[] for _ in self.models]
        return conversation.histories

    def new_image(self, value, conversation: Optional[Conversation]):
        """The image box changed: the new image joins the conversation (the next question is about it)."""
        conversation = conversation or Conversation()
        status = ""
        if value is not None:
            try:
                image = open_image(value)
                added = conversation.add(image)
                status = (f"image {len(conversation.images)} added: the next question is about it" if added
                          else "this image is already in the conversation")
            except ImageError as error:
                status = f"cannot use this image: {error}"
        return (*self.panes(conversation), status, conversation)

    def clear(self, conversation: Optional[Conversation]):
        """A new conversation, without images."""
        conversation = Conversation(histories=[[] for _ in self.models])
        return (*self.panes(conversation), "new conversation", conversation)

    def ask(self, question: str, value, temperature: float, top_p: float, max_new_tokens: float,
            conversation: Optional[Conversation]) -> Iterator[tuple]:
        """Stream every loaded model's reply to `question`: (pane per model..., status, conversation)."""
        conversation = conversation or Conversation()
        histories = self._histories(conversation)
        question = (question or "").strip()
        try:
            if value is not None:  # an image not seen yet joins the conversation (as the box's change does)
                conversation.add(open_image(value))
        except ImageError as error:
            yield (*self.panes(conversation), f"cannot use this image: {error}", conversation)
            return
        if not question:
            yield (*self.panes(conversation), "type a question", conversation)
            return
        live = [i for i, model in enumerate(self.models) if model.error is None]
        if not live:
            yield (*self.panes(conversation), "no model could be loaded", conversation)
            return
        sessions = {}
        for i in live:
            session = ChatSession(self.models[i].answerer, float(temperature), float(top_p), int(max_new_tokens))
            session.images, session.history = list(conversation.images), list(histories[i])
            sessions[i] = session
        asked = {i: session.placed(question) for i, session in sessions.items()}
        partial = {i: "" for i in live}
        failures = []
        fixed = self.panes(conversation)  # the panes of models that did not load: the same all along
        for i, item in stream_together(sessions, question):
            if isinstance(item, BaseException):
                reason = f"cannot answer: {item}" if isinstance(item, PromptTooLong) else f"{type(item).__name__}: {item}"
                failures.append(f"{self.models[i].path}: {reason}")
                continue
            if isinstance(item, Reply):
                histories[i].append((asked[i], str(item)))
                partial.pop(i)
            else:
                partial[i] += item
            shown_ = [messages(history, (asked[j], partial[j]) if j in partial else None) if j in sessions else pane
                      for j, (history, pane) in enumerate(zip(histories, fixed))]
            yield (*shown_, "answering..." if partial else "", conversation)
        notices = [f"{self.models[i].path}: {session.notice}" if len(sessions) > 1 else session.notice
                   for i, session in sessions.items() if session.notice]
        status = "; ".join(failures + notices) if failures or notices else "done"
        yield (*self.panes(conversation), status, conversation)

    def regenerate(self, value, temperature, top_p, max_new_tokens, conversation: Optional[Conversation]):
        """Ask the last question again (sampling gives a new answer; greedy the same one)."""
        conversation = conversation or Conversation()
        histories = self._histories(conversation)
        last = next((h[-1][0] for h in histories if h), None)
        if last is None:
            yield (*self.panes(conversation), "nothing to regenerate", conversation)
            return
        for history in histories:
            if history and history[-1][0] == last:
                history.pop()
        # asked again as it was: its placeholders already name its images
        yield from self.ask(last, None, temperature, top_p, max_new_tokens, conversation)


def stream_together(sessions: dict, question: str) -> Iterator[tuple[int, object]]:
    """(model index, piece / Reply / exception) from every session's stream, as they come."""
    events: queue.Queue = queue.Queue()

    def run(i: int, session: ChatSession) -> None:
        try:
            for item in session.stream(question):
                events.put((i, item))
        except Exception as error:  # reported in the page; the other models go on
            events.put((i, error))
        finally:
            events.put((i, None))

    for i, session in sessions.items():
        threading.Thread(target=run, args=(i, session), daemon=True).start()
    remaining = len(sessions)
    while remaining:
        i, item = events.get()
        if item is None:
            remaining -= 1
        else:
            yield i, item


def example_images(folder: Optional[str]) -> list[str]:
    """The first few images (by name) of --examples DIR; none without the flag. FileNotFoundError
    when DIR is not a folder of images."""
    if not folder:
        return []
    root = Path(folder)
    found = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if root.is_dir() else []
    if not found:
        raise FileNotFoundError(f"--examples {folder}: not a folder with images ({', '.join(IMAGE_SUFFIXES)})")
    return [str(p) for p in found[:EXAMPLES_SHOWN]]


def tolerant(image_box):
    """An image box that hands an unreadable upload to the handler as its reason (UnreadableImage),
    so the page can say what is wrong instead of Gradio's generic error. (Wrapping the instance's
    preprocess, not subclassing: Gradio writes a .pyi beside any module defining a component.)"""
    preprocess = image_box.preprocess

    def preprocess_or_reason(payload):
        path = getattr(payload, "path", None)
        try:
            if path:  # the header first: a decompression bomb is refused before anything decodes it
                read_image(path, "this image", decode=False)
            return preprocess(payload)
        except ImageError as error:
            return UnreadableImage(str(error))
        except Exception as error:  # noqa: BLE001 - whatever Gradio's decoding raised: the page says it
            return UnreadableImage(f"{type(error).__name__}: {error}")

    image_box.preprocess = preprocess_or_reason
    return image_box


def build_page(demo: Demo, examples: list[str]):
    import gradio as gr

    with gr.Blocks(title="llava-moslora") as page:
        gr.Markdown("### llava-moslora: chat about an image" +
                    ("" if len(demo.models) == 1 else f" with {len(demo.models)} models side by side"))
        conversation = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                image = tolerant(gr.Image(type="pil", label="image (each new one joins the conversation; Clear starts over)",
                                          height=280))
                temperature = gr.Slider(0.0, 1.5, value=0.0, step=0.05, label="temperature (0 = greedy)")
                top_p = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="top-p")
                max_new_tokens = gr.Slider(1, 1024, value=256, step=1, label="max new tokens")
            with gr.Column(scale=2 if len(demo.models) == 1 else 3):
                with gr.Row():
                    # raw text, as `chat` prints it (Markdown would turn a reply "2." into a list marker)
                    panes = [gr.Chatbot(label=model.path, height=420, render_markdown=False) for model in demo.models]
                question = gr.Textbox(label="question", placeholder=EXAMPLE_QUESTION, lines=1)
                with gr.Row():
                    send, regenerate, clear = gr.Button("Send", variant="primary"), gr.Button("Regenerate"), gr.Button("Clear")
                status = gr.Markdown("", elem_id="status")
        if examples:
            gr.Examples([[path, EXAMPLE_QUESTION] for path in examples], inputs=[image, question],
                        label="held-out ShapesVQA images")
        settings = [temperature, top_p, max_new_tokens, conversation]
        outputs = [*panes, status, conversation]
        page.load(demo.clear, [conversation], outputs, api_name=False)
        image.change(demo.new_image, [image, conversation], outputs, api_name="new_image")
        for trigger in (send.click, question.submit):
            trigger(demo.ask, [question, image, *settings], outputs, api_name="ask" if trigger == send.click else False
                    ).then(lambda: "", None, question, api_name=False)
        regenerate.click(demo.regenerate, [image, *settings], outputs, api_name="regenerate")
        clear.click(demo.clear, [conversation], outputs, api_name="clear")
    return page


def add_arguments(parser, name: str = "web") -> None:
    parser.add_argument("--model", action="append", required=True,
                        help="stage checkpoint or merged directory; give it again for side-by-side answers")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on [127.0.0.1; 0.0.0.0 to reach it from other machines]")
    parser.add_argument("--port", type=int, default=7860, help="port [7860]")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (needs internet)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    parser.add_argument("--max_image_pixels", type=int, default=MAX_IMAGE_PIXELS, help=PIXELS_HELP)
    parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPES],
                        help="auto: bfloat16 on a GPU that has it, else float32")
    parser.add_argument("--bits", type=int, default=None, choices=BITS, help=BITS_HELP)
    parser.add_argument("--template", default=None, help=TEMPLATE_HELP + "; for every --model")
    parser.add_argument("--examples", default=None,
                        help=f"folder whose first {EXAMPLES_SHOWN} images (by name) are offered as examples "
                             "[none; scripts/web.sh passes the quickstart's held-out images when they exist]")


def run(args, name: str = "web") -> int:
    set_max_image_pixels(args.max_image_pixels)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from an offline cluster node
    if importlib.util.find_spec("gradio") is None:
        print("llava-moslora web needs gradio: pip install 'llava-moslora[web]' "
              "(bash scripts/setup.sh installs it)", file=sys.stderr)
        return 2
    try:
        examples = example_images(args.examples)
    except FileNotFoundError as error:
        print(f"llava-moslora web: {error}", file=sys.stderr)
        return 2
    device = inference_device(args.device)
    demo = Demo(load_models(args.model, device, args.dtype, args.bits, args.template))
    page = build_page(demo, examples)
    page.queue(default_concurrency_limit=1)  # one generation at a time; other tabs wait their turn
    print(f"web: serving on http://{args.host}:{args.port} (from a laptop: ssh -L {args.port}:localhost:{args.port} "
          f"NODE, then open http://localhost:{args.port})", file=sys.stderr, flush=True)
    page.launch(server_name=args.host, server_port=args.port, share=args.share, show_error=True, ssr_mode=False,
                quiet=True)
    return 0
