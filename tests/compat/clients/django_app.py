"""Django's ORM through hoopy (run as its own process: Django's settings are global).

argv: port user password database tls(0|1). Prints one line per step."""
import sys

import django
from django.conf import settings

port, user, password, database, tls = sys.argv[1:6]
settings.configure(
    DATABASES={"default": {"ENGINE": "django.db.backends.postgresql", "HOST": "127.0.0.1", "PORT": port,
                           "USER": user, "PASSWORD": password, "NAME": database,
                           "OPTIONS": {"sslmode": "require" if tls == "1" else "disable"}}},
    INSTALLED_APPS=[], USE_TZ=True)
django.setup()

from django.db import models, transaction  # noqa: E402
from django.db.utils import DatabaseError  # noqa: E402


class Customer(models.Model):
    name = models.TextField()
    email = models.TextField()
    ssn = models.TextField()

    class Meta:
        app_label = "compat"
        db_table = "customers"
        managed = False


c = Customer.objects.get(id=1)
print("read", c.name, c.email, c.ssn)
c.name = "Annie"
try:
    with transaction.atomic():
        c.save()  # every field, the masked ones too
    print("saved?!")
except DatabaseError as e:
    print("refused", "redaction marker" in str(e))
c.save(update_fields=["name"])  # only what changed
print("saved name", Customer.objects.get(id=1).name)
Customer.objects.filter(id=1).update(name="Ann")
print("count", Customer.objects.count())
