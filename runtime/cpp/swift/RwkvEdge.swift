// RwkvEdge.swift: the Swift face of librwkv_edge (rwkv_edge.h, imported as the module CRwkvEdge by
// module.modulemap beside this file). Add both to an Xcode target with librwkv_edge and the TVM runtime
// built for iOS (docs/native-apps.md).
//
//   let model = try RwkvEdge(bundle: Bundle.main.url(forResource: "model", withExtension: nil)!, threads: 4)
//   let reply = try model.generate("User: hi\n\nAssistant:", maxTokens: 100,
//                                  sampler: SamplerParams(temperature: 1.0, topP: 0.7),
//                                  stop: ["\n\nUser:"]) { piece in print(piece, terminator: "") }
//   try model.saveState(to: documents.appendingPathComponent("chat.state"))
//
// An RwkvEdge is one opened bundle and one conversation (its session), freed when the object is; use
// it from one thread at a time. Every failure of the library is thrown as an RwkvEdgeError with its code
// and one-line message.

import CRwkvEdge
import Foundation

/// A failure of the runtime: `code` is the rwkv_edge_status, `message` one line.
public struct RwkvEdgeError: Error, Equatable, CustomStringConvertible {
    public static let argument = 1  // a bad argument: a token outside the vocabulary, a sampler setting, ...
    public static let bundle = 2  // the bundle fails a check: missing, truncated, tampered, another target, unpinned
    public static let state = 3  // a state file or array of another format, model or shape
    public static let unsupported = 4  // not in this runtime (the 20B tokenizer, an image model, another ABI)
    public static let io = 5  // a file cannot be read or written
    public static let runtime = 6  // TVM failed to load or run the model
    public static let memory = 7  // out of memory

    public let code: Int
    public let message: String

    public var description: String { "rwkv-edge error \(code): \(message)" }

    static func notAFile(_ url: URL) -> RwkvEdgeError {
        RwkvEdgeError(code: argument, message: "\(url) is not a file URL")
    }

    /// The error the library reported for `status` on this thread (read at once: the next call replaces it).
    static func last(_ status: rwkv_edge_status) -> RwkvEdgeError {
        RwkvEdgeError(code: Int(status.rawValue), message: String(cString: rwkv_edge_last_error()))
    }
}

@inline(__always)
private func check(_ status: rwkv_edge_status) throws {
    if status != RWKV_EDGE_OK { throw RwkvEdgeError.last(status) }
}

/// Calls `body` with the UTF-8 bytes of `text` (NUL-terminated, never a null pointer) and their count.
private func withUTF8<R>(_ text: String, _ body: (UnsafePointer<CChar>, Int) throws -> R) rethrows -> R {
    var bytes = Array(text.utf8)
    let count = bytes.count
    bytes.append(0)
    return try bytes.withUnsafeBufferPointer { buffer in
        try buffer.baseAddress!.withMemoryRebound(to: CChar.self, capacity: count + 1) { try body($0, count) }
    }
}

/// How the next token is drawn (rwkv_edge_sampler_params): the same draws as Python's Sampler for the same settings.
public struct SamplerParams: Equatable, Sendable {
    public var temperature: Double  // 0: greedy (argmax, lowest id on ties)
    public var topP: Double  // in (0, 1]
    public var topK: Int32  // > 0: keep at most this many tokens first; 0: no limit
    public var presencePenalty: Double
    public var frequencyPenalty: Double
    public var penaltyDecay: Double  // in (0, 1]
    public var seed: UInt64

    public init(temperature: Double = 1.0, topP: Double = 0.85, topK: Int32 = 0, presencePenalty: Double = 0,
                frequencyPenalty: Double = 0, penaltyDecay: Double = 1.0, seed: UInt64 = 0) {
        self.temperature = temperature
        self.topP = topP
        self.topK = topK
        self.presencePenalty = presencePenalty
        self.frequencyPenalty = frequencyPenalty
        self.penaltyDecay = penaltyDecay
        self.seed = seed
    }

    public static let greedy = SamplerParams(temperature: 0)
}

/// A sampler with its random generator and penalty counts: it goes on from draw to draw (and generate to generate).
public final class Sampler {
    let handle: OpaquePointer
    public let vocabSize: Int32

    public init(_ params: SamplerParams, vocabSize: Int32) throws {
        var p = rwkv_edge_default_sampler_params()
        p.temperature = params.temperature
        p.top_p = params.topP
        p.top_k = params.topK
        p.presence_penalty = params.presencePenalty
        p.frequency_penalty = params.frequencyPenalty
        p.penalty_decay = params.penaltyDecay
        p.seed = params.seed
        var out: OpaquePointer?
        try check(rwkv_edge_sampler_new(&p, vocabSize, &out))
        handle = out!
        self.vocabSize = vocabSize
    }

    deinit { rwkv_edge_sampler_free(handle) }

    /// One token id from `vocabSize` logits; counts it for the penalties.
    public func sample(_ logits: [Float]) throws -> Int32 {
        guard logits.count == Int(vocabSize) else {
            throw RwkvEdgeError(code: RwkvEdgeError.argument,
                                message: "\(logits.count) logits given; the sampler draws from \(vocabSize)")
        }
        var token: Int32 = -1
        try logits.withUnsafeBufferPointer { try check(rwkv_edge_sample(handle, $0.baseAddress, &token)) }
        return token
    }
}

/// An opened TVM bundle and one conversation with it.
public final class RwkvEdge {
    private let model: OpaquePointer
    private let session: OpaquePointer

    /// Rows of the model's embedding: token ids lie in 0..<vocabSize.
    public let vocabSize: Int32
    /// The manifest's architecture ("rwkv7", ...).
    public let architecture: String
    /// The bundle's tokenizer ("world", "bytes"; "20b" opens but does not tokenize).
    public let tokenizerName: String
    /// The tokenizer's end-of-text token ("world": 0), or -1 where it has none ("bytes").
    public let endOfText: Int32

    /// Open the bundle folder (every file checked against its manifest before any code loads).
    /// `threads`: the TVM thread pool's size (0: TVM's default; one pool per process, the last open sets it).
    /// `expectSha256`: the 64 hex digits `rwkv-edge compile` printed, to refuse any other manifest.
    public init(bundle: URL, threads: Int = 0, expectSha256: String? = nil) throws {
        var options = rwkv_edge_default_open_options()
        options.num_threads = Int32(clamping: threads)
        var out: OpaquePointer?
        try bundle.withUnsafeFileSystemRepresentation { dir in
            guard let dir else { throw RwkvEdgeError.notAFile(bundle) }
            if let pin = expectSha256 {
                try pin.withCString { options.expect_sha256 = $0; try check(rwkv_edge_model_open(dir, &options, &out)) }
            } else {
                try check(rwkv_edge_model_open(dir, &options, &out))
            }
        }
        let model = out!
        var session: OpaquePointer?
        let status = rwkv_edge_session_new(model, &session)
        if status != RWKV_EDGE_OK {
            let error = RwkvEdgeError.last(status)
            rwkv_edge_model_close(model)
            throw error
        }
        self.model = model
        self.session = session!
        vocabSize = rwkv_edge_vocab_size(model)
        architecture = String(cString: rwkv_edge_architecture(model))
        tokenizerName = String(cString: rwkv_edge_tokenizer_name(model))
        endOfText = rwkv_edge_end_of_text(model)
    }

    deinit {
        rwkv_edge_session_free(session)
        rwkv_edge_model_close(model)
    }

    // MARK: the tokenizer

    public func tokenize(_ text: String) throws -> [Int32] {
        try withUTF8(text) { bytes, len -> [Int32] in
            var ids = [Int32](repeating: 0, count: len)  // every token holds at least one byte
            var count = 0
            func call() -> rwkv_edge_status {
                ids.withUnsafeMutableBufferPointer { rwkv_edge_tokenize(model, bytes, len, $0.baseAddress, $0.count, &count) }
            }
            var status = call()
            if status == RWKV_EDGE_ERR_ARGUMENT && count > ids.count {
                ids = [Int32](repeating: 0, count: count)
                status = call()
            }
            try check(status)
            return Array(ids.prefix(count))
        }
    }

    /// The bytes of token `id`: possibly part of a UTF-8 character, empty for end-of-text.
    public func tokenBytes(_ id: Int32) throws -> [UInt8] {
        var bytes: UnsafePointer<CChar>?
        var len = 0
        try check(rwkv_edge_token_bytes(model, id, &bytes, &len))
        return len == 0 ? [] : Array(UnsafeRawBufferPointer(start: bytes, count: len))
    }

    /// The text of `ids` (bytes that are not UTF-8 become U+FFFD).
    public func detokenize(_ ids: [Int32]) throws -> String {
        var text = [UInt8]()
        for id in ids { text += try tokenBytes(id) }
        return String(decoding: text, as: UTF8.self)
    }

    // MARK: the session

    /// Feed `tokens` (at least one); the logits are then those after the last.
    public func prefill(_ tokens: [Int32]) throws {
        try tokens.withUnsafeBufferPointer { try check(rwkv_edge_prefill(session, $0.baseAddress, $0.count)) }
    }

    public func step(_ token: Int32) throws {
        try check(rwkv_edge_step(session, token))
    }

    /// The logits after the last token fed (RwkvEdgeError.state where none was fed since the start or reset()).
    public func logits() throws -> [Float] {
        var logits: UnsafePointer<Float>?
        try check(rwkv_edge_logits(session, &logits))
        return Array(UnsafeBufferPointer(start: logits, count: Int(vocabSize)))
    }

    /// Back to the model's initial state, with no logits.
    public func reset() throws {
        try check(rwkv_edge_session_reset(session))
    }

    /// The recurrent state: every tensor in the manifest's order, each C-contiguous, float32.
    public func state() throws -> [Float] {
        var values = [Float](repeating: 0, count: rwkv_edge_state_size(model))
        try values.withUnsafeMutableBufferPointer { try check(rwkv_edge_state_get(session, $0.baseAddress, $0.count)) }
        return values
    }

    /// Replace the state (the length state() returns); the session then has no logits.
    public func setState(_ values: [Float]) throws {
        try values.withUnsafeBufferPointer { try check(rwkv_edge_state_set(session, $0.baseAddress, $0.count)) }
    }

    /// Write the state, and the logits where there are some (written beside the file, then renamed into place).
    public func saveState(to file: URL) throws {
        try file.withUnsafeFileSystemRepresentation { path in
            guard let path else { throw RwkvEdgeError.notAFile(file) }
            try check(rwkv_edge_state_save(session, path))
        }
    }

    /// Read a state file saved from this model (RwkvEdgeError.state otherwise, the session unchanged).
    public func loadState(from file: URL) throws {
        try file.withUnsafeFileSystemRepresentation { path in
            guard let path else { throw RwkvEdgeError.notAFile(file) }
            try check(rwkv_edge_state_load(session, path))
        }
    }

    // MARK: generation

    /// Prefill `prompt` (may be empty only where the session has logits: after loadState or an earlier
    /// turn), then draw up to `maxTokens` tokens until `endToken` (not delivered; nil: `endOfText`; -1: none), a `stop` sequence (its
    /// text not delivered) or the end. `onPiece` gets the text as it is released; returns all of it.
    /// The session goes on from the last token delivered. `sampler` starts afresh for this call.
    @discardableResult
    public func generate(_ prompt: String, maxTokens: Int = 200, sampler: SamplerParams = SamplerParams(),
                         stop: [String] = [], endToken: Int32? = nil,
                         onPiece: (String) throws -> Void = { _ in }) throws -> String {
        try generate(prompt, maxTokens: maxTokens, sampler: Sampler(sampler, vocabSize: vocabSize), stop: stop,
                     endToken: endToken, onPiece: onPiece)
    }

    /// generate() with a `sampler` that goes on from its earlier draws (its random generator, its penalty counts).
    @discardableResult
    public func generate(_ prompt: String, maxTokens: Int, sampler: Sampler, stop: [String] = [],
                         endToken: Int32? = nil, onPiece: (String) throws -> Void = { _ in }) throws -> String {
        var text = [UInt8]()
        try generateTokens(prompt, maxTokens: maxTokens, sampler: sampler, stop: stop,
                           endToken: endToken ?? endOfText) { _, bytes in
            if !bytes.isEmpty {
                text += bytes
                try onPiece(String(decoding: bytes, as: UTF8.self))  // released text never ends inside a character
            }
            return true
        }
        return String(decoding: text, as: UTF8.self)
    }

    /// generate() at the level of the C call: `onToken` sees every token id and the raw bytes it releases
    /// (token -1: text held until the end) and returns false to stop. An error it throws stops generation
    /// and is rethrown here. Returns the number of tokens delivered.
    @discardableResult
    public func generateTokens(_ prompt: String, maxTokens: Int, sampler: Sampler, stop: [String] = [],
                               endToken: Int32 = -1, onToken: (Int32, [UInt8]) throws -> Bool) throws -> Int {
        if let bad = stop.first(where: { $0.utf8.contains(0) }) {
            throw RwkvEdgeError(code: RwkvEdgeError.argument,
                                message: "the stop sequence \(bad.debugDescription) contains a NUL byte")
        }
        guard sampler.vocabSize == vocabSize else {  // it would read past the session's logits
            throw RwkvEdgeError(code: RwkvEdgeError.argument, message: "the sampler draws from "
                                + "\(sampler.vocabSize) tokens; the model has \(vocabSize)")
        }
        return try withoutActuallyEscaping(onToken) { onToken in
            let listener = Listener(onToken)
            let stops = stop.map { strdup($0) }
            defer { stops.forEach { free($0) } }
            var generated: Int32 = 0
            let status: rwkv_edge_status = withUTF8(prompt) { bytes, len in
                stops.map { UnsafePointer($0) }.withUnsafeBufferPointer { pointers -> rwkv_edge_status in
                    var options = rwkv_edge_default_generate_options()
                    options.max_tokens = Int32(clamping: maxTokens)
                    options.stop = pointers.isEmpty ? nil : pointers.baseAddress
                    options.stop_count = pointers.count
                    options.end_token = endToken
                    return rwkv_edge_generate(session, sampler.handle, bytes, len, &options, { token, text, len, user in
                        let listener = Unmanaged<Listener>.fromOpaque(user!).takeUnretainedValue()
                        if listener.error != nil { return 1 }
                        let bytes = len == 0 ? [] : Array(UnsafeRawBufferPointer(start: text, count: len))
                        do {
                            return try listener.onToken(token, bytes) ? 0 : 1
                        } catch {
                            listener.error = error  // Swift errors do not cross C frames: kept, rethrown below
                            return 1
                        }
                    }, Unmanaged.passUnretained(listener).toOpaque(), &generated)
                }
            }
            if let error = listener.error { throw error }
            try check(status)
            return Int(generated)
        }
    }
}

/// What rwkv_edge_generate's callback reaches through its user_data.
private final class Listener {
    let onToken: (Int32, [UInt8]) throws -> Bool
    var error: Error?

    init(_ onToken: @escaping (Int32, [UInt8]) throws -> Bool) { self.onToken = onToken }
}
