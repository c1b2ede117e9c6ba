/// Decides what a recording is from its first bytes, never from its name or the client's
/// Content-Type, which anyone can set.
enum MediaType {
    /// Bytes the sniffer needs from the start of a file.
    static let sniffLength = 16

    /// The audio/video MIME type of the content, or nil when it is not a format we process.
    static func detect(_ head: [UInt8]) -> String? {
        func starts(_ magic: [UInt8], at offset: Int = 0) -> Bool {
            head.count >= offset + magic.count && Array(head[offset..<offset + magic.count]) == magic
        }
        let ascii = { (s: String) in Array(s.utf8) }
        if starts(ascii("RIFF")) && starts(ascii("WAVE"), at: 8) { return "audio/wav" }
        if starts(ascii("RIFF")) && starts(ascii("AVI "), at: 8) { return "video/x-msvideo" }
        if starts(ascii("OggS")) { return "audio/ogg" }
        if starts(ascii("fLaC")) { return "audio/flac" }
        if starts(ascii("ID3")) { return "audio/mpeg" }
        if starts(ascii("#!AMR")) { return "audio/amr" }
        if starts([0x1A, 0x45, 0xDF, 0xA3]) { return "video/webm" }
        if starts([0x30, 0x26, 0xB2, 0x75, 0x8E, 0x66, 0xCF, 0x11]) { return "video/x-ms-asf" }
        if starts(ascii("ftyp"), at: 4) {
            // M4A/M4B brands are audio; everything else in the ISO family we treat as video.
            let brand = head.count >= 12 ? String(decoding: head[8..<12], as: UTF8.self) : ""
            return brand.hasPrefix("M4A") || brand.hasPrefix("M4B") ? "audio/mp4" : "video/mp4"
        }
        if head.count >= 2, head[0] == 0xFF {
            if head[1] & 0xF6 == 0xF0 { return "audio/aac" }  // ADTS sync word, layer 0
            if head[1] & 0xE0 == 0xE0 { return "audio/mpeg" }  // MPEG audio frame sync
        }
        return nil
    }

    static let supported = ["audio/wav", "audio/mpeg", "audio/ogg", "audio/flac", "audio/aac", "audio/amr",
                            "audio/mp4", "video/mp4", "video/webm", "video/x-msvideo", "video/x-ms-asf"]
}
