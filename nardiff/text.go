package nardiff

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
)

// maxLCS bounds the cells of the line-matching table (the lines left after
// trimming the common head and tail, multiplied); past it the middle is
// shown as one replaced block.
const maxLCS = 1 << 20

// text explains two differing texts: the same lines in another order, or
// a bounded unified diff with the causes read off the changed lines.
func (d *differ) text(fd *FileDiff, a, b []byte) {
	la, lb := lines(a), lines(b)
	if sameLines(la, lb) {
		fd.Kind = Order
		fd.Causes = mergeCauses(fd.Causes, []Cause{{Kind: CauseFileOrder, Evidence: fmt.Sprintf("the same %d lines in another order", len(la))}})
	}
	ops := diffLines(la, lb)
	var removed, added []byte
	for _, op := range ops {
		switch op.kind {
		case '-':
			removed = append(append(removed, la[op.a]...), '\n')
		case '+':
			added = append(append(added, lb[op.b]...), '\n')
		}
	}
	if fd.Kind != Order {
		fd.Causes = mergeCauses(fd.Causes, causesIn(removed, added, d.o, true))
	}
	u, truncated := unified(la, lb, ops, d.lim.MaxDiffLines)
	if truncated {
		fd.Notes = append(fd.Notes, fmt.Sprintf("unified diff cut at %d lines", d.lim.MaxDiffLines))
	}
	if d.spend(len(u)) {
		fd.Unified = u
	}
}

func lines(b []byte) []string {
	s := strings.Split(string(b), "\n")
	if len(s) > 0 && s[len(s)-1] == "" {
		s = s[:len(s)-1]
	}
	return s
}

// sameLines: the same multiset of lines, in another order.
func sameLines(a, b []string) bool {
	if len(a) != len(b) || len(a) < 2 {
		return false
	}
	sa, sb := slices.Clone(a), slices.Clone(b)
	slices.Sort(sa)
	slices.Sort(sb)
	return slices.Equal(sa, sb)
}

// op is one line of an edit script: ' ' kept, '-' only in a, '+' only in b.
type op struct {
	kind byte
	a, b int
}

// diffLines returns an edit script from a to b: common head and tail
// trimmed, then a longest common subsequence of the middle when it is
// small enough, else the middle replaced whole.
func diffLines(a, b []string) []op {
	head := 0
	for head < len(a) && head < len(b) && a[head] == b[head] {
		head++
	}
	tail := 0
	for tail < len(a)-head && tail < len(b)-head && a[len(a)-1-tail] == b[len(b)-1-tail] {
		tail++
	}
	var ops []op
	for i := range head {
		ops = append(ops, op{' ', i, i})
	}
	ma, mb := a[head:len(a)-tail], b[head:len(b)-tail]
	if (len(ma)+1)*(len(mb)+1) <= maxLCS {
		ops = append(ops, lcs(ma, mb, head, head)...)
	} else {
		for i := range ma {
			ops = append(ops, op{'-', head + i, head})
		}
		for j := range mb {
			ops = append(ops, op{'+', head + len(ma), head + j})
		}
	}
	for k := range tail {
		ops = append(ops, op{' ', len(a) - tail + k, len(b) - tail + k})
	}
	return ops
}

func lcs(a, b []string, oa, ob int) []op {
	n, m := len(a), len(b)
	w := m + 1
	t := make([]int32, (n+1)*w)
	for i := n - 1; i >= 0; i-- {
		for j := m - 1; j >= 0; j-- {
			if a[i] == b[j] {
				t[i*w+j] = t[(i+1)*w+j+1] + 1
			} else {
				t[i*w+j] = max(t[(i+1)*w+j], t[i*w+j+1])
			}
		}
	}
	var ops []op
	i, j := 0, 0
	for i < n || j < m {
		switch {
		case i < n && j < m && a[i] == b[j]:
			ops = append(ops, op{' ', oa + i, ob + j})
			i, j = i+1, j+1
		case i < n && (j == m || t[(i+1)*w+j] >= t[i*w+j+1]):
			ops = append(ops, op{'-', oa + i, ob + j})
			i++
		default:
			ops = append(ops, op{'+', oa + i, ob + j})
			j++
		}
	}
	return ops
}

// unified renders ops as hunks with 3 lines of context, at most maxLines
// lines in all.
func unified(a, b []string, ops []op, maxLines int) (string, bool) {
	const ctx = 3
	var buf bytes.Buffer
	n := 0
	for i := 0; i < len(ops); {
		if ops[i].kind == ' ' {
			i++
			continue
		}
		start := max(0, i-ctx)
		end := i
		for end < len(ops) {
			if ops[end].kind != ' ' {
				end++
				continue
			}
			run := end
			for run < len(ops) && ops[run].kind == ' ' {
				run++
			}
			if run == len(ops) || run-end > 2*ctx {
				end = min(run, end+ctx)
				break
			}
			end = run
		}
		ca, cb := 0, 0
		for _, o := range ops[start:end] {
			if o.kind != '+' {
				ca++
			}
			if o.kind != '-' {
				cb++
			}
		}
		fmt.Fprintf(&buf, "@@ -%d,%d +%d,%d @@\n", ops[start].a+1, ca, ops[start].b+1, cb)
		for _, o := range ops[start:end] {
			if n >= maxLines {
				return buf.String(), true
			}
			line := ""
			if o.kind == '+' {
				line = b[o.b]
			} else {
				line = a[o.a]
			}
			if len(line) > 200 {
				line = line[:200] + "…"
			}
			fmt.Fprintf(&buf, "%c%s\n", o.kind, line)
			n++
		}
		i = end
	}
	return buf.String(), false
}
