//! Room for the header lines of one HTTP/1 head parsed in place with `httparse`, shared by the
//! request validator and the upstream answer reader: a few slots inline (whatever holds the
//! parsed head keeps them, a held poll included), and a heap vector sized to the head's lines
//! only for a larger head.

pub struct Slots<'b, const INLINE: usize> {
    inline: [httparse::Header<'b>; INLINE],
    heap: Vec<httparse::Header<'b>>,
}

impl<'b, const INLINE: usize> Slots<'b, INLINE> {
    pub fn new() -> Self {
        Slots {
            inline: [httparse::EMPTY_HEADER; INLINE],
            heap: Vec::new(),
        }
    }

    /// Runs `parse` over the inline slots and, when `too_many` says they were not enough, once
    /// more over heap slots. Every header line ends in a line feed, so their count in `buf`
    /// (plus a partial last line) bounds the slots needed; past `max` the second parse fails
    /// with too many headers, as it should.
    pub fn parse<T>(
        &'b mut self,
        buf: &[u8],
        max: usize,
        parse: impl Fn(&'b mut [httparse::Header<'b>]) -> T,
        too_many: impl Fn(&T) -> bool,
    ) -> T {
        let Slots { inline, heap } = self;
        let first = parse(inline);
        if !too_many(&first) {
            return first;
        }
        let lines = buf.iter().filter(|&&b| b == b'\n').count() + 1;
        heap.resize(lines.min(max), httparse::EMPTY_HEADER);
        parse(heap)
    }
}

impl<const INLINE: usize> Default for Slots<'_, INLINE> {
    fn default() -> Self {
        Self::new()
    }
}
