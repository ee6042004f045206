package nardiff

import (
	"errors"
	"time"
)

// Errors of Diff, matchable with errors.Is.
var (
	// ErrLimit: a hard limit of Limits was reached; the report is partial.
	ErrLimit = errors.New("nardiff: limit reached")
	// ErrMalformed: one of the inputs is not a valid NAR.
	ErrMalformed = errors.New("nardiff: malformed NAR")
)

// Limits bound what one Diff may cost. Zero fields take the defaults of
// DefaultLimits.
type Limits struct {
	// MaxEntries is the number of NAR entries read per side (hard).
	MaxEntries int
	// MaxDiffs is the number of differing files reported (soft); the rest
	// are only counted.
	MaxDiffs int
	// MaxBuffer is the size up to which a file is held in memory on each
	// side for a deep look (text diff, ELF, archives); larger files are
	// compared as streams and reported by first differing offset.
	MaxBuffer int64
	// MaxTextSize is the size up to which a text file gets a unified diff.
	MaxTextSize int64
	// MaxDiffLines bounds the lines of one unified diff.
	MaxDiffLines int
	// MaxDepth bounds nesting of archives in archives.
	MaxDepth int
	// MaxMemberSize bounds one decompressed archive member (zip bombs).
	MaxMemberSize int64
	// MaxMembers bounds the members read from one archive.
	MaxMembers int
	// MaxExpand bounds the bytes decompressed for one top-level file, over
	// all its members and nesting levels.
	MaxExpand int64
	// MaxOutput bounds the bytes of text kept in a report (diffs, hex
	// windows); past it details are dropped and a note says so.
	MaxOutput int
}

// DefaultLimits are the limits of a Diff run by hand (provenix diff).
var DefaultLimits = Limits{
	MaxEntries:    1 << 20,
	MaxDiffs:      1000,
	MaxBuffer:     16 << 20,
	MaxTextSize:   256 << 10,
	MaxDiffLines:  200,
	MaxDepth:      4,
	MaxMemberSize: 16 << 20,
	MaxMembers:    10000,
	MaxExpand:     64 << 20,
	MaxOutput:     1 << 20,
}

// SummaryLimits are tight limits for a diff run in a daemon's background
// (the pusher's dispute summary): a few MiB of memory, little output.
var SummaryLimits = Limits{
	MaxEntries:    1 << 18,
	MaxDiffs:      20,
	MaxBuffer:     4 << 20,
	MaxTextSize:   64 << 10,
	MaxDiffLines:  20,
	MaxDepth:      2,
	MaxMemberSize: 4 << 20,
	MaxMembers:    1000,
	MaxExpand:     8 << 20,
	MaxOutput:     64 << 10,
}

func (l Limits) withDefaults() Limits {
	d := DefaultLimits
	pick := func(v *int, def int) {
		if *v <= 0 {
			*v = def
		}
	}
	pick64 := func(v *int64, def int64) {
		if *v <= 0 {
			*v = def
		}
	}
	pick(&l.MaxEntries, d.MaxEntries)
	pick(&l.MaxDiffs, d.MaxDiffs)
	pick64(&l.MaxBuffer, d.MaxBuffer)
	pick64(&l.MaxTextSize, d.MaxTextSize)
	pick(&l.MaxDiffLines, d.MaxDiffLines)
	pick(&l.MaxDepth, d.MaxDepth)
	pick64(&l.MaxMemberSize, d.MaxMemberSize)
	pick(&l.MaxMembers, d.MaxMembers)
	pick64(&l.MaxExpand, d.MaxExpand)
	pick(&l.MaxOutput, d.MaxOutput)
	return l
}

// Options of Diff.
type Options struct {
	// LabelA and LabelB name the two sides in the report (a NAR hash, a
	// builder); default "a" and "b".
	LabelA, LabelB string
	// BuildTime anchors the recognition of embedded timestamps: a digit
	// run counts as a date when it falls within TimeWindow of it. Zero
	// means now.
	BuildTime time.Time
	// TimeWindow around BuildTime; zero means 2 years.
	TimeWindow time.Duration
	Limits     Limits
}

func (o Options) withDefaults() Options {
	if o.LabelA == "" {
		o.LabelA = "a"
	}
	if o.LabelB == "" {
		o.LabelB = "b"
	}
	if o.BuildTime.IsZero() {
		o.BuildTime = time.Now()
	}
	if o.TimeWindow <= 0 {
		o.TimeWindow = 2 * 365 * 24 * time.Hour
	}
	o.Limits = o.Limits.withDefaults()
	return o
}
