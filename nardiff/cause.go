package nardiff

import (
	"encoding/binary"
	"fmt"
	"regexp"
	"strconv"
	"time"
)

var (
	// Build directories and temp dirs: the nix sandbox's /build, the
	// non-sandboxed /tmp/nix-build-NAME.drv-N, mktemp's tmp.XXXXXXXXXX,
	// macOS per-user temp dirs.
	reBuildPath = regexp.MustCompile(`/build/[^\s"'\x00:]*|/tmp/nix-build-[^\s"'\x00:/]+|tmp\.[A-Za-z0-9]{6,}|/private/var/folders/[^\s"'\x00]+|/tmp/[A-Za-z0-9._-]*[0-9][A-Za-z0-9._-]*`)
	reISODate   = regexp.MustCompile(`\b(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2}))?)?`)
	reClock     = regexp.MustCompile(`\b\d{1,2}:\d{2}:\d{2}\b`)
	reDigits    = regexp.MustCompile(`\d{8,19}`)
	reYear      = regexp.MustCompile(`\b(19|20)\d{2}\b`)
	reUUID      = regexp.MustCompile(`(?i)\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b`)
	reToken     = regexp.MustCompile(`[A-Za-z0-9+/_-]{8,}`)
)

// causesIn names the causes shown by the differing regions a and b (the
// removed and added lines, or windows around a difference). A pattern
// counts only when its matches differ between the sides, so context
// shared by both is no evidence. Random identifiers are claimed only when
// nothing more specific explains the difference.
func causesIn(a, b []byte, o Options, random bool) []Cause {
	var cs []Cause
	if ea, eb, ok := differing(reBuildPath, a, b); ok {
		cs = append(cs, Cause{Kind: CauseBuildPath, Evidence: evidence(ea, eb)})
	}
	if e, ok := timestampIn(a, b, o); ok {
		cs = append(cs, Cause{Kind: CauseTimestamp, Evidence: e})
	}
	if len(cs) > 0 || !random {
		return cs
	}
	if ea, eb, ok := differing(reUUID, a, b); ok {
		return append(cs, Cause{Kind: CauseRandom, Evidence: evidence(ea, eb)})
	}
	ta, tb := randomTokens(a), randomTokens(b)
	if ea, eb, ok := setDiff(ta, tb); ok {
		cs = append(cs, Cause{Kind: CauseRandom, Evidence: evidence(ea, eb)})
	}
	return cs
}

// differing returns a match of re found on one side and not the other.
func differing(re *regexp.Regexp, a, b []byte) (string, string, bool) {
	return setDiff(all(re, a), all(re, b))
}

func all(re *regexp.Regexp, s []byte) []string {
	var out []string
	for _, m := range re.FindAll(s, 64) {
		out = append(out, string(m))
	}
	return out
}

// setDiff returns the first element of a not in b and of b not in a; ok
// when either exists.
func setDiff(a, b []string) (string, string, bool) {
	in := func(x string, s []string) bool {
		for _, y := range s {
			if x == y {
				return true
			}
		}
		return false
	}
	var ea, eb string
	for _, x := range a {
		if !in(x, b) {
			ea = x
			break
		}
	}
	for _, x := range b {
		if !in(x, a) {
			eb = x
			break
		}
	}
	return ea, eb, ea != "" || eb != ""
}

func evidence(a, b string) string {
	q := func(s string) string {
		if s == "" {
			return "(none)"
		}
		if len(s) > 80 {
			s = s[:80] + "…"
		}
		return strconv.Quote(s)
	}
	return q(a) + " vs " + q(b)
}

// timestampIn looks for dates near the build time that differ between
// the sides: ISO dates, epoch seconds or milliseconds, compact
// YYYYMMDD[hhmmss], or a clock time next to a plausible year (date(1)).
func timestampIn(a, b []byte, o Options) (string, bool) {
	near := func(t time.Time) bool {
		d := t.Sub(o.BuildTime)
		return d < o.TimeWindow && d > -o.TimeWindow
	}
	dates := func(s []byte) []string {
		var out []string
		for _, m := range reISODate.FindAllSubmatch(s, 64) {
			y, _ := strconv.Atoi(string(m[1]))
			mo, _ := strconv.Atoi(string(m[2]))
			dd, _ := strconv.Atoi(string(m[3]))
			if mo >= 1 && mo <= 12 && dd >= 1 && dd <= 31 && near(time.Date(y, time.Month(mo), dd, 0, 0, 0, 0, time.UTC)) {
				out = append(out, string(m[0]))
			}
		}
		wordEnd, hexWord := 0, false // the word of the last run, read once
		for _, loc := range reDigits.FindAllIndex(s, 64) {
			if loc[0] >= wordEnd {
				wordEnd, hexWord = hexWordAt(s, loc[0], loc[1])
			}
			if hexWord {
				continue
			}
			m := string(s[loc[0]:loc[1]])
			if t, ok := digitTime(m); ok && near(t) {
				out = append(out, m)
			}
		}
		if years := reYear.FindAll(s, 8); len(years) > 0 {
			for _, y := range years {
				n, _ := strconv.Atoi(string(y))
				if near(time.Date(n, 6, 1, 0, 0, 0, 0, time.UTC)) {
					out = append(out, all(reClock, s)...)
					break
				}
			}
		}
		return out
	}
	ea, eb, ok := setDiff(dates(a), dates(b))
	if !ok {
		return "", false
	}
	return evidence(ea, eb), true
}

// hexWordAt returns the end of the word s[start:end] (a run of digits)
// is part of, and whether that word is made of hex digits with a letter
// among them (a hash, a random id, a UUID's group). About one random id of 32 hex digits in 1,700 holds a run of
// digits that reads as a time within two years of the build (a
// simulation of 200,000), and its difference was then put down to a
// timestamp. A word with other letters (build1796522400, v20261206)
// still counts.
func hexWordAt(s []byte, start, end int) (wordEnd int, hex bool) {
	for start > 0 && isAlnum(s[start-1]) {
		start--
	}
	for end < len(s) && isAlnum(s[end]) {
		end++
	}
	letter := false
	for _, c := range s[start:end] {
		switch {
		case c >= '0' && c <= '9':
		case c >= 'a' && c <= 'f', c >= 'A' && c <= 'F':
			letter = true
		default:
			return end, false
		}
	}
	return end, letter
}

func isAlnum(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

// digitTime reads a digit run as epoch seconds (10), milli-, micro- or
// nanoseconds (13, 16, 19: date +%s%N), YYYYMMDD (8) or YYYYMMDDhhmmss
// (14).
func digitTime(s string) (time.Time, bool) {
	switch len(s) {
	case 10, 13, 16, 19:
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return time.Time{}, false
		}
		switch len(s) {
		case 13:
			return time.UnixMilli(n), true
		case 16:
			return time.UnixMicro(n), true
		case 19:
			return time.Unix(0, n), true
		}
		return time.Unix(n, 0), true
	case 8:
		t, err := time.Parse("20060102", s)
		return t, err == nil
	case 14:
		t, err := time.Parse("20060102150405", s)
		return t, err == nil
	}
	return time.Time{}, false
}

// binaryTimeSpread bounds how far apart the two sides' times of one
// 32-bit word may be (binaryTime). A build writes the time it ran, and
// two builds of one derivation that disagree ran within days of each
// other. Random bytes do not: one 32-bit word in 34 reads as a time
// within TimeWindow (two years) of the build, so 16 random bytes on
// each side were put down to a timestamp in about one diff of 600; with
// the times also within this spread, in about one of 5,000.
const binaryTimeSpread = 90 * 24 * time.Hour

// binaryTime checks whether the first difference at i falls inside a
// little- or big-endian 32-bit word that reads as a time near the build
// on both sides, the two within binaryTimeSpread (gzip and zip headers,
// PE and other binary timestamps).
func binaryTime(a, b []byte, i int, o Options) (Cause, bool) {
	for start := max(0, i-3); start <= i; start++ {
		if start+4 > len(a) || start+4 > len(b) {
			break
		}
		for _, bo := range []binary.ByteOrder{binary.LittleEndian, binary.BigEndian} {
			ta := time.Unix(int64(bo.Uint32(a[start:])), 0)
			tb := time.Unix(int64(bo.Uint32(b[start:])), 0)
			if ta.Equal(tb) {
				continue
			}
			da, db := ta.Sub(o.BuildTime), tb.Sub(o.BuildTime)
			if da.Abs() < o.TimeWindow && db.Abs() < o.TimeWindow && ta.Sub(tb).Abs() < binaryTimeSpread {
				return Cause{Kind: CauseTimestamp, Evidence: fmt.Sprintf("32-bit time at offset %d: %s vs %s", start, ta.UTC().Format(time.RFC3339), tb.UTC().Format(time.RFC3339))}, true
			}
		}
	}
	return Cause{}, false
}

// randomTokens are the high-entropy looking words of s: at least 8
// characters mixing digits and letters (hex ids, base64, nonces).
func randomTokens(s []byte) []string {
	var out []string
	for _, m := range reToken.FindAll(s, 256) {
		var digit, letter bool
		for _, c := range m {
			switch {
			case c >= '0' && c <= '9':
				digit = true
			case c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z':
				letter = true
			}
		}
		if digit && letter {
			out = append(out, string(m))
		}
	}
	return out
}

// mergeCauses adds the causes of more whose kind is not in cs yet.
func mergeCauses(cs, more []Cause) []Cause {
	for _, c := range more {
		dup := false
		for _, x := range cs {
			dup = dup || x.Kind == c.Kind
		}
		if !dup {
			cs = append(cs, c)
		}
	}
	return cs
}
