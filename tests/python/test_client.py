"""A non-Rust backend: Python clients, one generated from the proto, one using only reflection."""
import importlib
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from prompts import FRANCE, PROOF

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def generated_stubs(tmp_path_factory):
    out = tmp_path_factory.mktemp("stubs")
    from grpc_tools import protoc

    rc = protoc.main([
        "protoc", f"-I{ROOT / 'proto'}", f"--python_out={out}", f"--grpc_python_out={out}",
        str(ROOT / "proto/triage/v1/router.proto"),
    ])
    assert rc == 0, "grpc_tools.protoc failed"
    sys.path.insert(0, str(out))
    return importlib.import_module("triage.v1.router_pb2"), importlib.import_module(
        "triage.v1.router_pb2_grpc"
    )


def test_generated_client_routes_a_prompt(server_addr, generated_stubs):
    pb, pb_grpc = generated_stubs
    with grpc.insecure_channel(server_addr) as channel:
        stub = pb_grpc.RouterStub(channel)
        reply = stub.Route(pb.RouteRequest(
            messages=[pb.Message(role="user", content=FRANCE)],
            preferences=pb.Preferences(mode=pb.MODE_BALANCED),
        ), timeout=30)
        assert reply.request_id
        assert reply.policy_version
        assert len(reply.candidates) == 12
        assert reply.candidates[0].model == reply.model
        assert all(c.eligible for c in reply.candidates)

        try:
            stub.Route(pb.RouteRequest(messages=[pb.Message(role="robot", content="x")]), timeout=30)
            raise AssertionError("an unknown role must be rejected")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "messages[0].role" in e.details()

        models = stub.ListModels(pb.ListModelsRequest(), timeout=30)
        assert len(models.models) == 12


def test_generated_client_sends_feedback(server_addr, generated_stubs):
    pb, pb_grpc = generated_stubs
    with grpc.insecure_channel(server_addr) as channel:
        stub = pb_grpc.RouterStub(channel)
        routed = stub.Route(pb.RouteRequest(messages=[pb.Message(role="user", content=PROOF)]),
                            timeout=30)
        report = pb.FeedbackRequest(
            request_id=routed.request_id, feedback_id="py-1", model=routed.model, quality=0.75,
            input_tokens=routed.input_tokens, output_tokens=400, cost_usd=0.004, latency_ms=2100,
        )
        assert not stub.Feedback(report, timeout=30).duplicate
        assert stub.Feedback(report, timeout=30).duplicate

        report.request_id = "not-a-request"
        report.feedback_id = "py-2"
        try:
            stub.Feedback(report, timeout=30)
            raise AssertionError("feedback on an unknown request must be refused")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND
            assert "request_id" in e.details()


def test_reflection_only_client_and_health(server_addr):
    with grpc.insecure_channel(server_addr) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(service="triage.v1.Router"), timeout=30)
        assert status.status == health_pb2.HealthCheckResponse.SERVING

        db = ProtoReflectionDescriptorDatabase(channel)
        assert "triage.v1.Router" in db.get_services()
        pool = descriptor_pool.DescriptorPool(db)
        method = pool.FindMethodByName("triage.v1.Router.Route")
        request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        route = channel.unary_unary(
            "/triage.v1.Router/Route",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_cls.FromString,
        )

        def choose(prompt):
            req = json_format.ParseDict(
                {"messages": [{"role": "user", "content": prompt}],
                 "preferences": {"mode": "MODE_BALANCED"}},
                request_cls(),
            )
            return route(req, timeout=30)

        easy, hard = choose(FRANCE), choose(PROOF)
        assert easy.model != hard.model, (easy.model, hard.model)
        assert len(easy.candidates) == len(hard.candidates) == 12


def test_cli_route_prints_a_decision():
    out = subprocess.run(
        [os.environ["TRIAGE_TEST_BIN"], "route", FRANCE, "--mode", "quality"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("model:")
    assert "rank" in out.stdout and out.stdout.count("eligible") == 12
