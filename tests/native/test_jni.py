"""The app glue on a host JVM: librwkv_edge_jni.so (runtime/cpp/jni), built with its CMakeLists.txt
against librwkv_edge.so, opens the demo bundle and generates through Java; the token ids, logits and
state are held to the Python TVM backend's.

The JVM calls the glue through runtime/cpp/jni/test (RwkvEdgeNative.java: the native functions of
RwkvEdge.kt with the same package, class, names and JVM signatures; JniCheck.java: a command loop), so a
JDK is all it needs; where a Kotlin compiler is found (kotlinc on PATH, or the one the
kotlin-jupyter-kernel package ships), RwkvEdge.kt itself is compiled and run too. Every JVM runs with
-Xcheck:jni (a local reference leaked per token, a JNI call over a pending exception: a warning, and
the test fails) and with the JDK's libjsig preloaded: TVM's runtime installs a SIGSEGV handler of its
own, which takes the JVM's place without it (an ordinary NullPointerException then kills the JVM).
Skips name what is missing: javac, the JDK headers, cmake, a built librwkv_edge.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from rwkv_edge.tokenizer import ByteTokenizer

JNI = Path(__file__).resolve().parents[2] / "runtime" / "cpp" / "jni"
KOTLIN_SOURCE = JNI.parent / "android" / "RwkvEdge.kt"
JAVA_SOURCES = sorted((JNI / "test" / "rwkv" / "edge").glob("*.java"))
PROMPT = "The quick brown fox"
GREEDY = "0 1 0 0 0 1 0"  # JniCheck's sampler arguments: temperature 0 (top_p 1, no top_k, penalties or decay)
BUNDLE_ERROR, ARGUMENT_ERROR, STATE_ERROR = 2, 1, 3  # rwkv_edge_status


def quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class Jdk:
    home: Path
    javac: str
    java: str
    javap: str
    jsig: Path  # lib/libjsig.so: HotSpot's signal chaining


def find_jdk() -> tuple[Jdk | None, str | None]:
    """(the JDK, None) or (None, what is missing)."""
    javac = shutil.which("javac")
    if javac is None:
        return None, "javac is not installed (apt-get install openjdk-17-jdk-headless)"
    home = Path(os.environ.get("JAVA_HOME") or Path(os.path.realpath(javac)).parents[1])
    missing = [str(p) for p in (home / "include" / "jni.h", home / "include" / "linux" / "jni_md.h",
                                home / "lib" / "libjsig.so", home / "bin" / "java", home / "bin" / "javap")
               if not p.is_file()]
    if missing:
        return None, (f"the JDK at {home} lacks {', '.join(missing)} "
                      "(the JDK headers: install a full JDK, set JAVA_HOME)")
    return Jdk(home, javac, str(home / "bin" / "java"), str(home / "bin" / "javap"), home / "lib" / "libjsig.so"), None


def library_unavailable() -> str | None:
    """Why librwkv_edge.so cannot be built here, or None."""
    from rwkv_edge.runtime import native_runner

    if not hasattr(native_runner, "build_native"):
        return "librwkv_edge is not built by this tree (runtime.native_runner has no build_native)"
    return native_runner.runner_unavailable(native_runner.host_arch())


JDK, NO_JDK = find_jdk()
NO_CMAKE = None if shutil.which("cmake") else "cmake is not installed (apt-get install cmake)"
needs_jdk = pytest.mark.skipif(JDK is None, reason=f"no JDK: {NO_JDK}")
needs_glue = pytest.mark.skipif(JDK is None or NO_CMAKE is not None or library_unavailable() is not None,
                                reason=f"cannot build the JNI glue: {NO_JDK or NO_CMAKE or library_unavailable()}")


def kotlin_compiler() -> tuple[list[str], list[Path]] | None:
    """(the command that compiles .kt files, the jars their classes need at run time), or None."""
    kotlinc = shutil.which("kotlinc")
    if kotlinc:
        stdlib = Path(os.path.realpath(kotlinc)).parents[1] / "lib" / "kotlin-stdlib.jar"
        return [kotlinc, "-Werror"], [stdlib]
    spec = importlib.util.find_spec("run_kotlin_kernel")  # kotlin-jupyter-kernel bundles the compiler
    if spec is None or not spec.submodule_search_locations:
        return None
    jars = Path(spec.submodule_search_locations[0]) / "jars"
    compiler, stdlib = sorted(jars.glob("kotlin-jupyter-kernel-*-all.jar")), sorted(jars.glob("kotlin-stdlib-*.jar"))
    if not compiler or not stdlib:
        return None
    return [JDK.java, "-cp", str(compiler[0]), "org.jetbrains.kotlin.cli.jvm.K2JVMCompiler", "-no-stdlib",
            "-no-reflect", "-Werror", "-cp", str(stdlib[0])], [stdlib[0]]


KOTLIN = kotlin_compiler() if JDK is not None else None
needs_kotlin = pytest.mark.skipif(KOTLIN is None, reason="no Kotlin compiler: kotlinc is not on PATH and "
                                  "kotlin-jupyter-kernel (which ships one) is not installed")


def hex_of(data: bytes) -> str:
    return "x" + data.hex()


def bytes_of(field: str) -> bytes:
    assert field.startswith("x"), field
    return bytes.fromhex(field[1:])


def floats_of(field: str) -> np.ndarray:
    return np.frombuffer(bytes_of(field), dtype="<f4")


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done


# -- fixtures ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def glue(tmp_path_factory) -> Path:
    """The folder holding librwkv_edge_jni.so, built by runtime/cpp/jni/CMakeLists.txt against librwkv_edge.so."""
    from rwkv_edge.runtime.native_runner import build_native

    library = build_native(log=quiet).shared_library
    build = tmp_path_factory.mktemp("jni-build")
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    run(["cmake", "-S", str(JNI), "-B", str(build), *generator, f"-DRWKV_EDGE_LIBRARY={library}"],
        env={**os.environ, "JAVA_HOME": str(JDK.home)})
    run(["cmake", "--build", str(build), "--parallel", "2"])
    return build


@pytest.fixture(scope="module")
def java_classes(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("java-classes")
    run([JDK.javac, "-Xlint:all", "-Werror", "-d", str(out), *map(str, JAVA_SOURCES)])
    return out


@pytest.fixture(scope="module")
def jvm(glue, java_classes):
    """jvm(*commands) -> JniCheck's answers, one list of fields per command; fails on any JNI warning."""

    def answers(*commands: str) -> list[list[str]]:
        done = run([JDK.java, "-Xcheck:jni", f"-Djava.library.path={glue}", "-cp", str(java_classes),
                    "rwkv.edge.JniCheck"], input="\n".join(commands) + "\n",
                   env={**os.environ, "LD_PRELOAD": str(JDK.jsig)})
        assert done.stderr == "", done.stderr  # -Xcheck:jni reports here
        lines = done.stdout.splitlines()
        assert len(lines) == len(commands), done.stdout  # and nothing else on stdout
        return [line.split(" ") for line in lines]

    return answers


@pytest.fixture(scope="module")
def python_side(demo_bundle):
    """(TvmBackend of the demo bundle, greedy(prompt ids, n) -> the ids Python's generate yields)."""
    from rwkv_edge.runtime.generation import Sampler, generate
    from rwkv_edge.runtime.tvm_backend import TvmBackend

    backend = TvmBackend(demo_bundle)
    yield backend, lambda ids, n: [int(t) for t in generate(backend, ids, n, Sampler(temperature=0))]
    backend.close()


def open_command(bundle: Path, pin: str = "none") -> str:
    return f"open {hex_of(os.fsencode(bundle))} 1 {pin}"


# -- tests ------------------------------------------------------------------------------------------
@needs_glue
def test_greedy_generation_matches_python(demo_bundle, jvm, python_side):
    backend, greedy = python_side
    prompt_ids = ByteTokenizer().encode(PROMPT)
    _, info, tokenized, _, generated, _, _, prefill_logits, prefill_state = jvm(
        open_command(demo_bundle), "info", f"tokenize {hex_of(PROMPT.encode())}", f"sampler {GREEDY}",
        f"generate all 0 {hex_of(PROMPT.encode())} 48 -1", "reset", "prefill " + " ".join(map(str, prompt_ids)),
        "logits", "state")
    assert info[1:] == ["256", hex_of(b"v7"), hex_of(b"bytes"), "-1"]
    assert [int(t) for t in tokenized[1:]] == prompt_ids
    count, ids, pieces = int(generated[1]), generated[2].split(","), generated[3].split(",")
    expected = greedy(prompt_ids, 48)
    assert count == 48 and [int(t) for t in ids] == expected
    assert b"".join(bytes_of(p) for p in pieces) == ByteTokenizer().decode_bytes(expected)  # all of it released

    logits, state = backend.prefill(prompt_ids, backend.init_state())
    np.testing.assert_array_equal(floats_of(prefill_logits[1]), logits)
    flat = np.concatenate([np.asarray(state[t.input_name], np.float32).ravel() for t in backend.state_spec()])
    np.testing.assert_array_equal(floats_of(prefill_state[1]), flat)


@needs_glue
def test_sampled_generation_and_the_end_token_match_python(demo_bundle, jvm, python_side):
    """Every sampler setting reaches the C sampler in its place (the seed above 2**63: a Java long read as
    unsigned): the draws equal Python's; an end token stops generation before it, as in Python."""
    from rwkv_edge.runtime.generation import Sampler, generate

    backend, greedy = python_side
    prompt_ids = ByteTokenizer().encode(PROMPT)
    seed = 12345678901234567890
    sampler = Sampler(temperature=1.3, top_p=0.9, top_k=20, presence_penalty=0.3, frequency_penalty=0.2,
                      penalty_decay=0.95, seed=seed)
    end = greedy(prompt_ids, 48)[20]
    answers = jvm(open_command(demo_bundle), f"sampler 1.3 0.9 20 0.3 0.2 0.95 {seed}",
                  f"generate all 0 {hex_of(PROMPT.encode())} 40 -1", "reset", f"sampler {GREEDY}",
                  f"generate all 0 {hex_of(PROMPT.encode())} 48 {end}")
    sampled, ended = answers[2], answers[5]
    assert [int(t) for t in sampled[2].split(",")] == [int(t) for t in generate(backend, prompt_ids, 40, sampler)]
    expected = [int(t) for t in generate(backend, prompt_ids, 48, Sampler(temperature=0), end_token=end)]
    assert int(ended[1]) == len(expected) < 48 and [int(t) for t in ended[2].split(",")] == expected


@needs_glue
def test_state_file_carries_a_generation_over(demo_bundle, jvm, python_side, tmp_path):
    """Save after 20 tokens, load into a fresh model, go on with an empty prompt: the 40 tokens of one
    generation. The path (not ASCII, with a character outside the BMP) reaches the C library as UTF-8."""
    _, greedy = python_side
    path = tmp_path / "état-😀.state"
    first = jvm(open_command(demo_bundle), f"sampler {GREEDY}", f"generate all 0 {hex_of(PROMPT.encode())} 20 -1",
                f"save {hex_of(str(path).encode())}")
    assert os.listdir(tmp_path) == [path.name]  # Java's modified UTF-8 would have named it otherwise
    second = jvm(open_command(demo_bundle), f"sampler {GREEDY}", f"load {hex_of(str(path).encode())}",
                 "generate all 0 x 20 -1")
    assert all(answer[0] == "ok" for answer in first + second), first + second
    expected = greedy(ByteTokenizer().encode(PROMPT), 40)
    assert [int(t) for t in first[2][2].split(",")] == expected[:20]
    assert [int(t) for t in second[3][2].split(",")] == expected[20:]


@needs_glue
def test_a_long_generation_leaks_no_local_reference(demo_bundle, jvm):
    """600 listener calls in one native call: a byte[] left undeleted per token would pass -Xcheck:jni's
    local reference capacity (32) and be reported."""
    answers = jvm(open_command(demo_bundle), f"sampler {GREEDY}", f"generate all 0 {hex_of(PROMPT.encode())} 600 -1")
    assert answers[2][:2] == ["ok", "600"] and len(answers[2][2].split(",")) >= 600


@needs_glue
def test_bad_bundles_throw_the_exception_with_its_code(demo_bundle, jvm, tmp_path):
    missing = tmp_path / "nö-bündle-😀"
    tampered = tmp_path / "tampered"
    shutil.copytree(demo_bundle, tampered)
    data = bytearray((tampered / "params.safetensors").read_bytes())
    data[-1] ^= 1
    (tampered / "params.safetensors").write_bytes(bytes(data))
    answers = jvm(open_command(missing), open_command(tampered), open_command(demo_bundle, pin=hex_of(b"0" * 64)),
                  f"open {hex_of(b'/tmp/a' + bytes([0]) + b'b')} 1 none")
    for answer in answers[:3]:
        assert answer[0] == "error" and int(answer[1]) == BUNDLE_ERROR, answer
    messages = [bytes_of(a[2]).decode("utf-8") for a in answers]
    assert str(missing) in messages[0]  # the message's UTF-8 bytes arrive as they are
    assert "params.safetensors" in messages[1] and "sha256" in messages[1]
    assert answers[3][:2] == ["error", str(ARGUMENT_ERROR)] and messages[3] == "the bundle folder contains a NUL byte"


@needs_glue
def test_listener_stops_and_its_exception_reaches_the_caller(demo_bundle, jvm, python_side):
    """A listener that returns false stops after that token; one that throws stops generation, its
    exception reaches the Java caller, and the session holds the tokens delivered up to it."""
    backend, greedy = python_side
    prompt_ids = ByteTokenizer().encode(PROMPT)
    answers = jvm(open_command(demo_bundle), f"sampler {GREEDY}",
                  f"generate stop 3 {hex_of(PROMPT.encode())} 10 -1", "reset",
                  f"generate throw 2 {hex_of(PROMPT.encode())} 10 -1", "logits")
    stopped, thrown, logits = answers[2], answers[4], answers[5]
    expected = greedy(prompt_ids, 3)
    assert stopped[1] == "3" and [int(t) for t in stopped[2].split(",")] == expected
    assert thrown[:2] == ["throw", "java.lang.IllegalStateException"]
    assert bytes_of(thrown[2]) == b"listener threw at 2"
    after, state = backend.prefill(prompt_ids, backend.init_state())
    for token in expected[:2]:  # both delivered tokens were fed
        after, state = backend.step(token, state)
    np.testing.assert_array_equal(floats_of(logits[1]), after)


@needs_glue
def test_bad_arguments_throw_with_their_codes(demo_bundle, jvm):
    answers = jvm(open_command(demo_bundle), "logits", "step 256", "sampler 1 0 0 0 0 1 0", f"sampler {GREEDY}",
                  f"samplefrom {hex_of(bytes(12))}", f"generate all 0 {hex_of(b'a')} 5 -1 {hex_of(b'x' + bytes(1))}",
                  f"load {hex_of(str(demo_bundle / 'manifest.json').encode())}", "close", "info")
    codes = [(a[0], int(a[1])) if a[0] == "error" else (a[0],) for a in answers]
    assert codes == [("ok",), ("error", STATE_ERROR), ("error", ARGUMENT_ERROR), ("error", ARGUMENT_ERROR), ("ok",),
                     ("error", ARGUMENT_ERROR), ("error", ARGUMENT_ERROR), ("error", STATE_ERROR), ("ok",),
                     ("error", ARGUMENT_ERROR)], answers
    messages = {i: bytes_of(answers[i][2]).decode() for i in (5, 6, 9)}
    assert messages == {5: "3 logits given; the sampler draws from 256", 6: "a stop sequence contains a NUL byte",
                        9: "the model is null (closed?)"}


def kotlin_externals() -> dict[str, str]:
    """RwkvEdge.kt's external functions as javap prints static natives: {name: "ret name(args)"}."""
    types = {"Long": "long", "Int": "int", "Double": "double", "Boolean": "boolean", "String": "java.lang.String",
             "ByteArray": "byte[]", "IntArray": "int[]", "FloatArray": "float[]", "Array<ByteArray>": "byte[][]",
             "TokenListener": "rwkv.edge.TokenListener", "Unit": "void"}
    found = {}
    text = KOTLIN_SOURCE.read_text()
    for name, params, result in re.findall(r"@JvmStatic external fun (\w+)\(([^)]*)\)(?:: ([\w<>?]+))?", text):
        args = [types[p.split(":")[1].strip().rstrip("?")] for p in params.split(",") if p.strip()]
        found[name] = f"{types[(result or 'Unit').rstrip('?')]} {name}({', '.join(args)})"
    return found


@needs_jdk
def test_java_twin_declares_what_the_kotlin_class_declares(java_classes):
    done = run([JDK.javap, "-cp", str(java_classes), "rwkv.edge.RwkvEdgeNative"])
    java = {m.group(2): f"{m.group(1)} {m.group(2)}({m.group(3)})"
            for m in re.finditer(r"public static native (\S+) (\w+)\(([^)]*)\);", done.stdout)}
    kotlin = kotlin_externals()
    assert len(kotlin) == 23 and java == kotlin


@needs_glue
def test_the_library_exports_every_native_function_and_nothing_else(glue):
    if shutil.which("nm") is None:
        pytest.skip("nm is not installed (apt-get install binutils)")
    done = run(["nm", "-D", "--defined-only", str(glue / "librwkv_edge_jni.so")])
    exported = {line.split()[-1] for line in done.stdout.splitlines()}
    assert exported == {f"Java_rwkv_edge_RwkvEdgeNative_{name}" for name in kotlin_externals()} | {
        "JNI_OnLoad", "JNI_OnUnload"}


@needs_glue
@needs_kotlin
def test_the_kotlin_class_generates_saves_and_throws(demo_bundle, glue, python_side, tmp_path):
    command, runtime = KOTLIN
    classes = tmp_path / "classes"
    run([*command, str(KOTLIN_SOURCE), str(JNI / "test" / "KotlinCheck.kt"), "-d", str(classes)])
    state, missing = tmp_path / "chat.state", tmp_path / "missing"
    done = run([JDK.java, "-Xcheck:jni", f"-Djava.library.path={glue}",
                "-cp", os.pathsep.join(map(str, [classes, *runtime])), "rwkv.edge.KotlinCheckKt",
                str(demo_bundle), PROMPT, "24", str(state), str(missing)],
               env={**os.environ, "LD_PRELOAD": str(JDK.jsig)})
    assert done.stderr == ""
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    _, greedy = python_side
    expected = ByteTokenizer().decode_bytes(greedy(ByteTokenizer().encode(PROMPT), 48))
    assert lines["info"] == "256 v7 bytes -1"
    assert bytes.fromhex(lines["text"]) == bytes.fromhex(lines["pieces"]) == expected[:24]
    assert bytes.fromhex(lines["more"]) == expected[24:]
    assert bytes.fromhex(lines["detokenized"]) == PROMPT.encode()
    assert lines["error"].split(" ")[:2] == [str(BUNDLE_ERROR), "RWKV_EDGE_ERR_BUNDLE"]
    assert bytes.fromhex(lines["closed"]) == b"this RwkvEdge is closed"
    assert bytes.fromhex(lines["thrown"]) == b"stop here"


def test_swift_module_map_builds_as_a_clang_module(tmp_path):
    """runtime/cpp/swift/module.modulemap is the Clang module Swift imports as CRwkvEdge: Clang builds it,
    an Objective-C file imports it, and the object carries its request to link librwkv_edge (ELF's
    .linker-options here; Mach-O's LC_LINKER_OPTION on Apple's toolchain, not checked here)."""
    clang = shutil.which("clang") or shutil.which("clang-14")
    if clang is None:
        pytest.skip("clang is not installed (scripts/install-arm-tools.sh installs it): the module map needs Clang modules")
    if shutil.which("readelf") is None:
        pytest.skip("readelf is not installed (apt-get install binutils)")
    source = tmp_path / "use.m"
    source.write_text("@import CRwkvEdge;\n"
                      "int main(void) {\n"
                      "  rwkv_edge_model* model = 0;\n"
                      "  rwkv_edge_open_options options = rwkv_edge_default_open_options();\n"
                      "  return rwkv_edge_model_open(\"missing\", &options, &model) == RWKV_EDGE_ERR_BUNDLE ? 0 : 1;\n"
                      "}\n")
    run([clang, "-fmodules", f"-fmodules-cache-path={tmp_path / 'cache'}", "-I", str(JNI.parent / "swift"),
         "-Werror", "-c", str(source), "-o", str(tmp_path / "use.o")])
    options = run(["readelf", "-p", ".linker-options", str(tmp_path / "use.o")]).stdout
    assert re.search(r"\]\s+lib\n.*\]\s+rwkv_edge\n", options), options
