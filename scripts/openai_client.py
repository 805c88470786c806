"""Drives `cargo xtask serve` with the official `openai` client (pip install openai):
an image question, the same question streamed, and TITA through `extra_body`.

    cargo xtask serve --model fixtures/llava-target --reward fixtures/llava-reward --port 8000 &
    python3 scripts/openai_client.py --base-url http://127.0.0.1:8000/v1 --image fixtures/images/rocket.jpg
"""

import argparse
import base64
import json

from openai import OpenAI


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    ap.add_argument("--api-key", default="none")
    ap.add_argument("--image", required=True)
    ap.add_argument("--prompt", default="Is there a rocket in the image?")
    a = ap.parse_args()
    client = OpenAI(base_url=a.base_url, api_key=a.api_key)
    model = client.models.list().data[0].id
    with open(a.image, "rb") as f:
        url = "data:image/jpeg;base64," + base64.b64encode(f.read()).decode()
    messages = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}},
        {"type": "text", "text": a.prompt},
    ]}]
    plain = client.chat.completions.create(model=model, messages=messages, max_tokens=12)
    print("greedy:", repr(plain.choices[0].message.content), plain.usage)
    streamed = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(
            model=model, messages=messages, max_tokens=12, stream=True
        )
        if chunk.choices
    )
    print("streamed:", repr(streamed))
    assert streamed == plain.choices[0].message.content, "stream and answer differ"
    tita = client.chat.completions.create(
        model=model, messages=messages, max_tokens=12,
        extra_body={"tita": {"mode": "interpolate", "lambda": 0.3}},
    )
    print("TITA λ=0.3:", repr(tita.choices[0].message.content))
    # One line a test can read back.
    print(json.dumps({"greedy": plain.choices[0].message.content, "streamed": streamed,
                      "tita": tita.choices[0].message.content,
                      "completion_tokens": plain.usage.completion_tokens}))


if __name__ == "__main__":
    main()
