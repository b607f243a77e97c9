from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0004_job_permissions"),
    ]

    operations = [
        migrations.AddField(
            model_name="job",
            name="result_bytes",
            field=models.PositiveBigIntegerField(default=0),
        ),
    ]
