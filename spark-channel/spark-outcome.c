/* spark-outcome.c: where an outcome goes
 *
 * SPDX-License-Identifier: LGPL-2.1-or-later
 */

#include "config.h"

#include "spark-outcome-private.h"

void
spark_outcome_init_sync (SparkOutcome *outcome)
{
  outcome->sync = TRUE;
  outcome->now = FALSE;
  outcome->to.waiter = spark_sync_waiter_get ();
}

void
spark_outcome_init_now (SparkOutcome         *outcome,
                        SparkPortDeliverFunc  deliver)
{
  outcome->sync = FALSE;
  outcome->now = TRUE;
  outcome->item.deliver = deliver;
  outcome->to.port = NULL;
}

void
spark_outcome_init_port (SparkOutcome         *outcome,
                         GMainContext         *producer,
                         SparkPortDeliverFunc  deliver)
{
  outcome->sync = FALSE;
  outcome->now = FALSE;
  outcome->item.deliver = deliver;
  outcome->to.port = spark_reply_port_hold (producer);
  outcome->soon = spark_reply_port_expects_soon (outcome->to.port, producer);
}
