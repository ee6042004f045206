package runner

import (
	"errors"
	"time"
)

// rotation decides which connection Run polls when a slot is free: the
// connections in turn, starting after the one polled last, skipping those
// whose last poll found nothing less than their fetch interval ago and
// those whose forge refused the runner. A forge that always has tasks
// therefore gets at most every other free slot while another has work:
// it cannot starve it. Run's loop alone uses it.
type rotation struct {
	next      int
	notBefore []time.Time
	refused   []error
}

func newRotation(n int) *rotation {
	return &rotation{notBefore: make([]time.Time, n), refused: make([]error, n)}
}

// pick returns the connection to poll now, or -1 and how long to wait
// before one is due; err is set when every forge refused the runner.
func (o *rotation) pick(now time.Time) (i int, wait time.Duration, err error) {
	n := len(o.notBefore)
	wait = -1
	live := false
	for k := range n {
		j := (o.next + k) % n
		if o.refused[j] != nil {
			continue
		}
		live = true
		if d := o.notBefore[j].Sub(now); d > 0 {
			if wait < 0 || d < wait {
				wait = d
			}
			continue
		}
		o.next = (j + 1) % n
		return j, 0, nil
	}
	if !live {
		return -1, 0, errors.Join(o.refused...)
	}
	return -1, wait, nil
}

// empty records that connection i had no task (or its poll failed): it is
// not polled again before interval has passed.
func (o *rotation) empty(i int, now time.Time, interval time.Duration) {
	o.notBefore[i] = now.Add(interval)
}

// refuse records that connection i's forge refuses the runner: it is not
// polled again.
func (o *rotation) refuse(i int, err error) { o.refused[i] = err }
