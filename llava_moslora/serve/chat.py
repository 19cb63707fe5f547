"""`llava-moslora chat`: a multi-turn conversation about an image with any checkpoint of this project.

Interactive: the reply streams token by token; `/image PATH` adds an image to the conversation
(the next question is asked about it, the earlier ones stay in view, as in LLaVA-Interleave),
`/reset` starts over without images, `/exit` or end of input leaves. `--prompt TEXT` (repeatable)
answers each prompt in turn, prints only the answers and exits. Loading and speed reports go to
stderr, so stdout holds only the conversation.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Iterator, Optional

from PIL import Image

from ..data.images import MAX_IMAGE_PIXELS, PIXELS_HELP, ImageError, read_image, set_max_image_pixels, to_rgb
from ..data.templates import IMAGE_TOKEN
from ..model.inference import Answerer, PromptTooLong
from ..model import DTYPES, inference_device, inference_dtype, load_checkpoint
from ..model.quantize import loading_quantization
from ..names import BITS, BITS_HELP, TEMPLATE_HELP

HELP = "commands: /image PATH (add an image; the next question is about it), /reset (start over, no images), /exit"


class ChatSession:
    """One conversation: its images, the (question, reply) turns so far (each question holding the
    `<image>` placeholders of the images it was asked with), and sampling settings."""

    def __init__(self, answerer: Answerer, temperature: float = 0.0, top_p: float = 1.0,
                 max_new_tokens: int = 512) -> None:
        self.answerer = answerer
        self.images: list[Image.Image] = []
        self.history: list[tuple[str, str]] = []
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {}
        self.settings = {"max_new_tokens": max_new_tokens, **sampling}
        self.notice: Optional[str] = None  # what the model's context left out of the latest reply

    @property
    def unasked(self) -> int:
        """Images added since the last question: the next question carries their placeholders."""
        return len(self.images) - sum(question.count(IMAGE_TOKEN) for question, _ in self.history)

    def add_image(self, image) -> None:
        """Add an image (a path or an opened image) to the conversation. An unreadable one, or one
        over the pixel limit, raises ImageError and leaves the session as it was."""
        self.images.append(to_rgb(image) if isinstance(image, Image.Image) else read_image(image, f"image {image}"))

    def set_image(self, path: Optional[str]) -> None:
        """Start a new conversation about this image (or none)."""
        self.use_image(read_image(path, f"image {path}") if path else None)

    def use_image(self, image: Optional[Image.Image]) -> None:
        """A new conversation about this (already opened) image, or none."""
        self.images, self.history = ([to_rgb(image)] if image is not None else []), []

    def reset(self) -> None:
        self.images, self.history = [], []

    def placed(self, question: str) -> str:
        """The question with the placeholders of the images added since the last one: an image
        joins the conversation at the question asked after it (earlier turns stay as they were)."""
        missing = self.unasked - question.count(IMAGE_TOKEN)  # a question asked again holds its own
        return f"{IMAGE_TOKEN}\n" * missing + question if missing > 0 else question

    def stream(self, question: str) -> Iterator[str]:
        """The reply to `question` in pieces, as it is generated. The last item is the whole reply
        as the answerer decoded it (the pieces joined may differ from it in outer whitespace);
        the turn joins the history when the reply is complete."""
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.answerer.bundle.tokenizer, skip_prompt=True, skip_special_tokens=True)
        result = {}
        question = self.placed(question)

        def generate():
            try:
                result["reply"] = self.answerer(question, self.images, self.history, streamer=streamer, **self.settings)
            except BaseException as error:  # surfaced in the caller's thread
                result["error"] = error
                streamer.end()

        worker = threading.Thread(target=generate, daemon=True)
        worker.start()
        yield from (Piece(chunk) for chunk in streamer)
        worker.join()
        if "error" in result:
            raise result["error"]
        self._answered(question, result["reply"])
        yield Reply(result["reply"])

    def _answered(self, question: str, reply: str) -> None:
        """The turn joins the history (whole: the context only decides what each prompt shows)."""
        self.history.append((question, reply))
        self.notice = self.answerer.last_fit.notice if self.answerer.last_fit is not None else None

    def ask(self, question: str, on_text=None) -> str:
        """The reply to `question`; on_text(chunk) sees it while it is generated."""
        if on_text is None:
            question = self.placed(question)
            reply = self.answerer(question, self.images, self.history, **self.settings)
            self._answered(question, reply)
            return reply
        for item in self.stream(question):
            if isinstance(item, Reply):
                return str(item)
            on_text(str(item))
        raise AssertionError("stream ended without a reply")  # pragma: no cover


class Piece(str):
    """A streamed part of a reply."""


class Reply(str):
    """The whole reply, last item of ChatSession.stream."""


def timed_answer(session: ChatSession, question: str, stats: bool, on_text=None) -> str:
    """The reply; what the context left out, and with `stats` the speed, go to stderr."""
    start = time.perf_counter()
    reply = session.ask(question, on_text)
    if session.notice:
        print(f"\n(note: {session.notice})", file=sys.stderr, flush=True)
    if stats:
        seconds = time.perf_counter() - start
        tokens = session.answerer.last_new_tokens
        print(f"[{tokens} tokens in {seconds:.2f} s, {tokens / max(seconds, 1e-9):.1f} tokens/s]", file=sys.stderr)
    return reply


def interactive(session: ChatSession, stats: bool) -> None:
    print(HELP, file=sys.stderr)
    while True:
        try:
            line = input("USER: ").strip()
        except EOFError:
            print(file=sys.stderr)
            return
        if not line:
            continue
        if line == "/exit":
            return
        if line == "/reset":
            session.reset()
            print("(new conversation, no images)", file=sys.stderr)
        elif line.startswith("/image"):
            path = line[len("/image"):].strip()
            if not path:
                print("usage: /image PATH (adds an image; /reset starts over without images)", file=sys.stderr)
                continue
            try:
                session.add_image(path)
                print(f"(image {len(session.images)}: {path}; the next question is about it)", file=sys.stderr)
            except ImageError as error:
                print(f"cannot use image {path!r}: {error}", file=sys.stderr)
        elif line.startswith("/"):
            print(f"unknown command {line.split()[0]}; {HELP}", file=sys.stderr)
        else:
            print("ASSISTANT: ", end="", flush=True)
            try:
                timed_answer(session, line, stats, on_text=lambda chunk: print(chunk, end="", flush=True))
            except PromptTooLong as error:
                print(f"(cannot answer: {error})", file=sys.stderr, flush=True)
            print(flush=True)


def add_arguments(parser, name: str = "chat") -> None:
    parser.add_argument("--model", required=True, help="stage checkpoint or merged directory")
    parser.add_argument("--image", action="append", default=None,
                        help="image to talk about (repeatable: several images, asked about together; "
                             "/image PATH adds one later)")
    parser.add_argument("--prompt", action="append", default=None,
                        help="answer this and exit (repeatable: one conversation, answers one per line)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling mass when temperature > 0")
    parser.add_argument("--max_new_tokens", type=int, default=512)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    parser.add_argument("--max_image_pixels", type=int, default=MAX_IMAGE_PIXELS, help=PIXELS_HELP)
    parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPES],
                        help="auto: bfloat16 on a GPU that has it, else float32")
    parser.add_argument("--bits", type=int, default=None, choices=BITS, help=BITS_HELP)
    parser.add_argument("--stats", action="store_true", help="report tokens per second after each answer")
    parser.add_argument("--template", default=None, help=TEMPLATE_HELP)


def run(args, name: str = "chat") -> int:
    set_max_image_pixels(args.max_image_pixels)
    device = inference_device(args.device)
    start = time.perf_counter()
    try:
        bundle = load_checkpoint(args.model, dtype=inference_dtype(args.dtype, device),
                                 quantization=loading_quantization(args.bits), template=args.template)
    except (FileNotFoundError, ValueError) as error:
        print(f"llava-moslora chat: {error}", file=sys.stderr)
        return 2
    session = ChatSession(Answerer(bundle, device=device), args.temperature, args.top_p, args.max_new_tokens)
    print(f"loaded {args.model} ({bundle.recipe.template} template) on {device} in "
          f"{time.perf_counter() - start:.1f} s", file=sys.stderr)
    for path in args.image or []:
        try:
            session.add_image(path)
        except ImageError as error:
            print(f"cannot use image {path!r}: {error}", file=sys.stderr)
            if args.prompt:
                return 2
    if args.prompt:
        for prompt in args.prompt:
            try:
                print(timed_answer(session, prompt, args.stats), flush=True)
            except PromptTooLong as error:
                print(f"llava-moslora chat: cannot answer {prompt[:40]!r}...: {error}", file=sys.stderr)
                return 2
        return 0
    interactive(session, args.stats)
    return 0
