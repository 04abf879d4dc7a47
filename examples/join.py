"""A two-stage job: join orders to users by user id, then total the order amounts per country.

    corral run examples/join.py examples/data/users.csv examples/data/orders.csv --out /tmp/join

Stage 1 (a reduce-side join) tags each CSV row with its table, groups both tables by user id and
emits (country, amount) for every order; stage 2 sums the amounts per country.
"""

import corral


class CountryRevenue(corral.Job):
    def steps(self):
        return [
            corral.Step(map=self.map_rows, reduce=self.join_users),
            corral.Step(map=self.map_amounts, combine=self.sum_amounts, reduce=self.sum_amounts),
        ]

    def map_rows(self, key, line):
        fields = line.split(",")
        if fields[0] in ("user_id", "order_id"):  # header rows
            return
        if len(fields) == 3 and fields[0].startswith("u"):  # users.csv: user_id,name,country
            yield fields[0], ["user", fields[2]]
        elif len(fields) == 3:  # orders.csv: order_id,user_id,amount
            yield fields[1], ["order", round(float(fields[2]) * 100)]
        else:
            self.increment_counter("join", "malformed rows")

    def join_users(self, user_id, rows):
        country, amounts = None, []
        for table, value in rows:
            if table == "user":
                country = value
            else:
                amounts.append(value)
        if country is None:
            self.increment_counter("join", "orders without a user", len(amounts))
            return
        for cents in amounts:
            yield country, cents

    def map_amounts(self, country, cents):
        yield country, cents

    def sum_amounts(self, country, cents):
        yield country, sum(cents)


if __name__ == "__main__":
    CountryRevenue.main()
