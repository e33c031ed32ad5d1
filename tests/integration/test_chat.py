"""The chat example end to end: three participants, a fault mid-conversation."""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import reliable_tcp as rt
from helpers import fast_options, wait_for
from reliable_tcp.testing import FaultProxy

spec = importlib.util.spec_from_file_location("chat", Path(__file__).resolve().parents[2] / "tools" / "chat.py")
assert spec is not None and spec.loader is not None
chat = importlib.util.module_from_spec(spec)
spec.loader.exec_module(chat)


def test_every_line_reaches_every_other_participant_once() -> None:
    with rt.listen(("127.0.0.1", 0), **fast_options()) as listener, FaultProxy(listener.address) as proxy:
        server = chat.ChatServer(listener)
        serving = threading.Thread(target=server.serve_forever, name="test-chat-server")
        serving.start()
        names = ["agent", "customer-1", "customer-2"]
        clients = [chat.ChatClient(proxy.address, name, **fast_options()) for name in names]
        wait_for(lambda: len(server.members) == 3, 10, "everyone to join")
        received: dict[str, list[str]] = {name: [] for name in names}
        for round_number in range(20):
            if round_number == 10:
                proxy.reset()  # mid-conversation: every link breaks at once
            for name, client in zip(names, clients, strict=True):
                client.say(f"{name} line {round_number}")
        expected = {
            name: sorted(f"{other}: {other} line {i}" for other in names if other != name for i in range(20)) for name in names
        }

        def all_arrived() -> bool:
            for name, client in zip(names, clients, strict=True):
                received[name] += client.lines()
            return all(sorted(received[name]) == expected[name] for name in names)

        wait_for(all_arrived, 20, "every line")
        for name in names:
            # In order per sender, and exactly once.
            for other in names:
                mine = [line for line in received[name] if line.startswith(f"{other}:")]
                assert mine == [f"{other}: {other} line {i}" for i in range(20)] or other == name
        for client in clients:
            client.close()
        listener.close()
        serving.join(10)
        for thread in server.threads:
            thread.join(10)
        assert not serving.is_alive()


def test_receipts_and_the_link_status_through_a_cut() -> None:
    """Issue 28: two participants; the agent's link is blackholed mid-chat.
    Lines typed meanwhile are queued (no receipt), the status says the link
    is down, and once it heals every line is delivered, receipts in order,
    each line once and in order at the other participant."""
    options = fast_options(resume_window=60.0)
    with rt.listen(("127.0.0.1", 0), **options) as listener, FaultProxy(listener.address) as proxy:
        server = chat.ChatServer(listener)
        serving = threading.Thread(target=server.serve_forever, name="test-chat-server")
        serving.start()
        agent = chat.ChatClient(proxy.address, "agent", **options)
        customer = chat.ChatClient(listener.address, "customer", **options)
        try:
            wait_for(lambda: len(server.members) == 2, 10, "both to join")
            first = agent.say("hello, how can I help?")
            agent.wait_delivered(first, timeout=10)
            proxy.blackhole()
            wait_for(lambda: agent.link_status().startswith("down for"), 10, "the status to say the link is down")
            typed = [agent.say(f"while the cable is out {n}") for n in range(5)]
            assert not any(agent.delivered(seq) for seq in typed)  # queued, not delivered
            proxy.set_faults("both", blackhole=False)
            for seq in typed:
                agent.wait_delivered(seq, timeout=30)
            assert agent.link_status() == "up" and len(agent.outages()) == 1
            got: list[str] = []
            expected = ["agent: hello, how can I help?"] + [f"agent: while the cable is out {n}" for n in range(5)]

            def arrived() -> bool:
                got.extend(customer.lines())
                return len(got) >= len(expected)

            wait_for(arrived, 20, "every line at the customer")
            assert got == expected  # once each, in order
        finally:
            for client in (agent, customer):
                client.channel.abort()
            listener.close()
            serving.join(10)
            for thread in server.threads:
                thread.join(10)
